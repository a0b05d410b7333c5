//! The little ELF reading setup needs, through the `object` crate, on
//! untrusted bytes: whether an x86-64 executable is statically linked or
//! which program interpreter and libraries it needs (so a dynamically
//! linked agent can run as `/init` with them beside it in the initramfs),
//! and the contents of a named section (a kernel module's `.modinfo`).
//! Pure functions except [`library_closure`], which reads the host's
//! library directories.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use object::elf;
use object::read::elf::{
    Dyn as _, ElfFile64, FileHeader as _, ProgramHeader as _, SectionHeader as _,
};
use object::{Endianness, Object, ObjectSection};

/// Why bytes are not a usable ELF file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("not a 64-bit little-endian ELF file")]
    NotElf64Le,
    #[error("built for ELF machine {0}, not x86-64")]
    WrongMachine(u16),
    #[error("ELF type {0} is not an executable")]
    NotExecutable(u16),
    #[error("malformed ELF: {0}")]
    Malformed(String),
    #[error("needs {library}, which is not in {searched}")]
    LibraryNotFound { library: String, searched: String },
}

/// How an executable is linked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linkage {
    /// No program interpreter: runs as it is.
    Static,
    /// Needs this interpreter and these libraries (`DT_NEEDED`).
    Dynamic {
        interpreter: String,
        needed: Vec<String>,
    },
}

fn parse(bytes: &[u8]) -> Result<ElfFile64<'_, Endianness>, ElfError> {
    if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    if bytes.len() < 6 || bytes[4] != elf::ELFCLASS64 || bytes[5] != elf::ELFDATA2LSB {
        return Err(ElfError::NotElf64Le);
    }
    ElfFile64::parse(bytes).map_err(|e| ElfError::Malformed(e.to_string()))
}

/// The shared libraries an ELF file names (`DT_NEEDED`), in order.
fn needed_of(file: &ElfFile64<'_, Endianness>) -> Result<Vec<String>, ElfError> {
    let bad = |e: object::Error| ElfError::Malformed(e.to_string());
    let endian = file.endian();
    let data = file.data();
    let mut out = Vec::new();
    for ph in file.elf_program_headers() {
        let Some(dynamic) = ph.dynamic(endian, data).map_err(bad)? else {
            continue;
        };
        // DT_STRTAB holds an address: find the string table through the
        // section headers (present in every file the linker writes).
        let strtab = file
            .elf_section_table()
            .iter()
            .find(|s| s.sh_type(endian) == elf::SHT_DYNSYM)
            .map(|s| {
                file.elf_section_table().strings(
                    endian,
                    data,
                    object::SectionIndex(s.sh_link(endian) as usize),
                )
            })
            .transpose()
            .map_err(bad)?;
        for d in dynamic {
            if d.tag32(endian) == Some(elf::DT_NEEDED) {
                let strtab = strtab.as_ref().ok_or_else(|| {
                    ElfError::Malformed("DT_NEEDED without a string table".into())
                })?;
                let name = d.string(endian, *strtab).map_err(bad)?;
                out.push(String::from_utf8_lossy(name).into_owned());
            }
        }
    }
    Ok(out)
}

/// Check that `bytes` are an x86-64 ELF executable and say how it links.
pub fn executable_linkage(bytes: &[u8]) -> Result<Linkage, ElfError> {
    let file = parse(bytes)?;
    let endian = file.endian();
    let header = file.elf_header();
    let machine = header.e_machine(endian);
    if machine != elf::EM_X86_64 {
        return Err(ElfError::WrongMachine(machine));
    }
    let e_type = header.e_type(endian);
    if e_type != elf::ET_EXEC && e_type != elf::ET_DYN {
        return Err(ElfError::NotExecutable(e_type));
    }
    let headers = file.elf_program_headers();
    if headers.is_empty() {
        return Err(ElfError::Malformed("no program headers".into()));
    }
    let interp = headers
        .iter()
        .find_map(|ph| ph.interpreter(endian, file.data()).ok().flatten());
    match interp {
        None => Ok(Linkage::Static),
        Some(raw) => Ok(Linkage::Dynamic {
            interpreter: String::from_utf8_lossy(raw).into_owned(),
            needed: needed_of(&file)?,
        }),
    }
}

/// The contents of the first section called `name`, if the bytes are ELF
/// and have it.
pub fn section<'a>(bytes: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let file = parse(bytes).ok()?;
    file.section_by_name(name)?.data().ok()
}

/// Where the host keeps shared libraries (Debian multiarch first).
pub const LIBRARY_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// Every file a dynamically linked executable needs to run: its
/// interpreter and the transitive closure of its `DT_NEEDED` libraries,
/// found in `dirs`. Returned as (path inside the guest, path on the host);
/// the guest path is where the loader looks for it (the first of `dirs`
/// that has it, or the interpreter's own path).
pub fn library_closure(
    interpreter: &str,
    needed: &[String],
    dirs: &[&str],
) -> Result<Vec<(String, PathBuf)>, ElfError> {
    let mut out = vec![(interpreter.to_string(), PathBuf::from(interpreter))];
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut queue: Vec<String> = needed.to_vec();
    while let Some(lib) = queue.pop() {
        if !seen.insert(lib.clone()) {
            continue;
        }
        let found = dirs
            .iter()
            .map(|d| Path::new(d).join(&lib))
            .find(|p| p.is_file())
            .ok_or_else(|| ElfError::LibraryNotFound {
                library: lib.clone(),
                searched: dirs.join(":"),
            })?;
        let guest = found.to_string_lossy().into_owned();
        if out.iter().any(|(g, _)| *g == guest) {
            continue; // the interpreter itself, named as a library
        }
        let bytes = std::fs::read(&found)
            .map_err(|e| ElfError::Malformed(format!("{}: {e}", found.display())))?;
        let file = parse(&bytes)?;
        queue.extend(needed_of(&file)?);
        out.push((guest, found));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_binaries_link_dynamically_and_their_closure_is_found() {
        let ls = std::fs::read("/bin/ls").unwrap();
        let Linkage::Dynamic {
            interpreter,
            needed,
        } = executable_linkage(&ls).unwrap()
        else {
            panic!("/bin/ls is static?")
        };
        assert!(interpreter.contains("ld-linux-x86-64"), "{interpreter}");
        assert!(
            needed.iter().any(|n| n.starts_with("libc.so")),
            "{needed:?}"
        );
        let closure = library_closure(&interpreter, &needed, LIBRARY_DIRS).unwrap();
        assert_eq!(closure[0].0, interpreter);
        assert!(closure.iter().any(|(g, _)| g.ends_with("/libc.so.6")));
        let err = library_closure(
            &interpreter,
            &["libhearth-nonexistent.so.9".into()],
            LIBRARY_DIRS,
        )
        .unwrap_err();
        assert!(err.to_string().contains("libhearth-nonexistent"), "{err}");
    }

    #[test]
    fn static_binaries_and_garbage() {
        // busybox-static is a static x86-64 executable (setup installs it).
        let bb = std::fs::read("/bin/busybox").expect("busybox-static (hearth setup installs it)");
        assert_eq!(executable_linkage(&bb).unwrap(), Linkage::Static);
        assert_eq!(executable_linkage(b"#!/bin/sh\n"), Err(ElfError::NotElf));
        let mut bad = std::fs::read("/bin/ls").unwrap();
        bad[4] = 1; // 32-bit class
        assert_eq!(executable_linkage(&bad), Err(ElfError::NotElf64Le));
        let mut truncated = std::fs::read("/bin/ls").unwrap();
        truncated.truncate(100);
        assert!(executable_linkage(&truncated).is_err());
        let lib = std::fs::read(
            LIBRARY_DIRS
                .iter()
                .map(|d| Path::new(d).join("libc.so.6"))
                .find(|p| p.is_file())
                .unwrap(),
        )
        .unwrap();
        assert!(section(&lib, ".dynsym").is_some());
        assert!(section(&lib, ".hearth-none").is_none());
        assert!(section(b"not elf", ".text").is_none());
    }
}
