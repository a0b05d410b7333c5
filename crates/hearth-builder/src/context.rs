//! The build context on the host: the unpacked code artifact, listed once
//! (with `.dockerignore` applied), its Dockerfile read, and packed as one
//! tar stream for the guest. Blocking file work, run by the build's task
//! through `spawn_blocking`.

use std::fs;
use std::path::{Path, PathBuf};

use hearth_dockerfile::{ContextEntry, EntryKind};

use crate::error::Failure;

/// Largest Dockerfile read.
pub const MAX_DOCKERFILE_BYTES: usize = 1 << 20;

/// The listed context.
#[derive(Debug, Clone)]
pub struct Context {
    pub dir: PathBuf,
    pub dockerfile: String,
    /// Entries that are not ignored, relative, sorted.
    pub entries: Vec<ContextEntry>,
    /// Bytes of the regular files in `entries`.
    pub total_bytes: u64,
}

/// Read the Dockerfile and list what the context offers to COPY.
pub fn load(dir: &Path) -> Result<Context, Failure> {
    let dockerfile_path = dir.join("Dockerfile");
    let meta = fs::symlink_metadata(&dockerfile_path).map_err(|_| Failure::NoDockerfile)?;
    if !meta.is_file() {
        return Err(Failure::NoDockerfile);
    }
    if meta.len() > MAX_DOCKERFILE_BYTES as u64 {
        return Err(Failure::DockerfileUnreadable {
            max_bytes: MAX_DOCKERFILE_BYTES,
        });
    }
    let dockerfile = fs::read(&dockerfile_path)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or(Failure::DockerfileUnreadable {
            max_bytes: MAX_DOCKERFILE_BYTES,
        })?;
    let ignore = match fs::read_to_string(dir.join(".dockerignore")) {
        Ok(text) => Some(
            hearth_dockerfile::parse_dockerignore(&text)
                .map_err(|e| Failure::Context(format!(".dockerignore: {e}")))?,
        ),
        Err(_) => None,
    };
    let mut entries = Vec::new();
    let mut total_bytes = 0u64;
    walk(dir, Path::new(""), &mut |rel, kind, size| {
        let rel_str = rel.to_string_lossy().into_owned();
        if ignore.as_ref().is_some_and(|i| i.ignored(&rel_str)) {
            return;
        }
        if kind == EntryKind::File {
            total_bytes += size;
        }
        entries.push(ContextEntry {
            path: rel_str,
            kind,
        });
    })
    .map_err(|e| Failure::Context(e.to_string()))?;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Context {
        dir: dir.to_path_buf(),
        dockerfile,
        entries,
        total_bytes,
    })
}

fn walk(root: &Path, rel: &Path, f: &mut dyn FnMut(&Path, EntryKind, u64)) -> std::io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(root.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let child = rel.join(&name);
        let meta = fs::symlink_metadata(root.join(&child))?;
        if meta.is_dir() {
            f(&child, EntryKind::Dir, 0);
            walk(root, &child, f)?;
        } else if meta.is_file() {
            f(&child, EntryKind::File, meta.len());
        }
        // Anything else cannot be in an unpacked artifact (the unpacker
        // refuses it); skip rather than follow.
    }
    Ok(())
}

/// Pack the listed entries into a tar file at `out` (paths relative,
/// modes kept, owners root).
pub fn pack(ctx: &Context, out: &Path) -> Result<u64, Failure> {
    let file = fs::File::create(out).map_err(|e| Failure::Io(format!("tar: {e}")))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    for e in &ctx.entries {
        let src = ctx.dir.join(&e.path);
        let r = match e.kind {
            EntryKind::Dir => tar.append_dir(&e.path, &src),
            EntryKind::File => tar.append_path_with_name(&src, &e.path),
        };
        r.map_err(|err| Failure::Context(format!("{}: {err}", e.path)))?;
    }
    let w = tar
        .into_inner()
        .map_err(|e| Failure::Io(format!("tar: {e}")))?;
    let f = w
        .into_inner()
        .map_err(|e| Failure::Io(format!("tar: {e}")))?;
    f.sync_all().ok();
    Ok(f.metadata().map(|m| m.len()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_context_lists_what_dockerignore_leaves_and_packs_it() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("Dockerfile"), "FROM x\n").unwrap();
        fs::write(d.path().join(".dockerignore"), "secret.txt\n").unwrap();
        fs::write(d.path().join("secret.txt"), "no").unwrap();
        fs::create_dir(d.path().join("app")).unwrap();
        fs::write(d.path().join("app/main.py"), "print(1)\n").unwrap();
        let ctx = load(d.path()).unwrap();
        let paths: Vec<_> = ctx.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![".dockerignore", "Dockerfile", "app", "app/main.py"]
        );
        assert_eq!(ctx.total_bytes, 7 + 11 + 9);
        let out = d.path().join("ctx.tar");
        pack(&ctx, &out).unwrap();
        let mut a = tar::Archive::new(fs::File::open(&out).unwrap());
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"app/main.py".to_string()));
        assert!(!names.iter().any(|n| n.contains("secret")));
    }

    #[test]
    fn a_missing_dockerfile_is_named() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(load(d.path()), Err(Failure::NoDockerfile)));
    }
}
