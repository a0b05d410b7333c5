//! Resolving an `ExecRequest::user` against `/etc/passwd` and `/etc/group`
//! of the current root (runs on the reader thread, before a spawn).
//!
//! Accepted forms: `name`, `uid`, `name:group`, `uid:gid` (group by name or
//! number), as in a Dockerfile `USER`. The agent is a static binary without
//! NSS, so the files are parsed directly. A numeric uid without a passwd
//! entry gets gid 0 and home `/` (Docker's behaviour).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use hearth_proto::{AgentError, AgentErrorKind};

use crate::errors::{agent_error, invalid, io_error};

/// Largest passwd/group file the agent reads.
const MAX_DB_BYTES: u64 = 8 * 1024 * 1024;

/// Who a process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Creds {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary group first).
    pub groups: Vec<u32>,
    pub home: String,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

/// Resolve `spec` using `<etc_dir>/passwd` and `<etc_dir>/group`.
pub(crate) fn resolve(spec: &str, etc_dir: &Path) -> Result<Creds, AgentError> {
    if spec.is_empty() || spec.len() > 256 || spec.contains('\0') {
        return Err(invalid(format_args!(
            "user {spec:?} is not a valid user spec"
        )));
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || group == Some("") {
        return Err(invalid(format_args!(
            "user {spec:?} is not a valid user spec"
        )));
    }
    let passwd_path = etc_dir.join("passwd");
    let passwd = read_db(&passwd_path)?;
    let entry = match user.parse::<u32>() {
        Ok(uid) => passwd_entries(&passwd)
            .find(|e| e.uid == uid)
            .unwrap_or(PasswdEntry {
                name: String::new(),
                uid,
                gid: 0,
                home: "/".into(),
            }),
        Err(_) => passwd_entries(&passwd)
            .find(|e| e.name == user)
            .ok_or_else(|| {
                agent_error(
                    AgentErrorKind::NotFound,
                    format_args!("user {user:?} not found in {}", passwd_path.display()),
                )
            })?,
    };

    let group_path = etc_dir.join("group");
    // A missing group file only matters when a group name must be looked up.
    let groups_db = match read_db(&group_path) {
        Ok(db) => db,
        Err(e) if e.kind == AgentErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let gid = match group {
        None => entry.gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(&groups_db)
                .find(|(name, _, _)| *name == g)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| {
                    agent_error(
                        AgentErrorKind::NotFound,
                        format_args!("group {g:?} not found in {}", group_path.display()),
                    )
                })?,
        },
    };
    let mut groups = vec![gid];
    if !entry.name.is_empty() {
        for (_, member_gid, members) in group_entries(&groups_db) {
            if members.split(',').any(|m| m == entry.name) && !groups.contains(&member_gid) {
                groups.push(member_gid);
            }
        }
    }
    Ok(Creds {
        uid: entry.uid,
        gid,
        groups,
        home: entry.home,
    })
}

fn read_db(path: &Path) -> Result<String, AgentError> {
    let file =
        File::open(path).map_err(|e| io_error(format_args!("open {}", path.display()), &e))?;
    let mut bytes = Vec::new();
    file.take(MAX_DB_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(format_args!("read {}", path.display()), &e))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn passwd_entries(db: &str) -> impl Iterator<Item = PasswdEntry> + '_ {
    db.lines().filter_map(|line| {
        // name:password:uid:gid:gecos:home:shell
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || f[0].is_empty() {
            return None;
        }
        Some(PasswdEntry {
            name: f[0].to_string(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: if f[5].is_empty() { "/" } else { f[5] }.to_string(),
        })
    })
}

/// `(name, gid, comma-separated members)` of each group line.
fn group_entries(db: &str) -> impl Iterator<Item = (&str, u32, &str)> + '_ {
    db.lines().filter_map(|line| {
        // name:password:gid:members
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || f[0].is_empty() {
            return None;
        }
        Some((f[0], f[2].parse().ok()?, f[3]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn etc() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "hearth-agent-users-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("passwd"),
            "root:x:0:0:root:/root:/bin/bash\n\
             broken line\n\
             app:x:1000:1000:App,,,:/home/app:/bin/sh\n\
             nohome:x:1001:1001::::\n",
        )
        .unwrap();
        fs::write(
            dir.join("group"),
            "root:x:0:\napp:x:1000:\nstaff:x:50:app,other\nwheel:x:10:root\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn names_numbers_and_groups_resolve() {
        let dir = etc();
        let app = resolve("app", &dir).unwrap();
        assert_eq!(
            app,
            Creds {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 50],
                home: "/home/app".into()
            }
        );
        let root = resolve("0", &dir).unwrap();
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/root"));
        assert_eq!(root.groups, vec![0, 10]);
        let unknown = resolve("4242", &dir).unwrap();
        assert_eq!(
            (unknown.uid, unknown.gid, unknown.groups),
            (4242, 0, vec![0])
        );
        let with_group = resolve("app:staff", &dir).unwrap();
        assert_eq!((with_group.uid, with_group.gid), (1000, 50));
        assert_eq!(resolve("app:7", &dir).unwrap().gid, 7);
        assert_eq!(resolve("nohome", &dir).unwrap().home, "/");
    }

    #[test]
    fn unknown_or_malformed_users_fail() {
        let dir = etc();
        assert_eq!(
            resolve("nobody", &dir).unwrap_err().kind,
            AgentErrorKind::NotFound
        );
        assert_eq!(
            resolve("app:nogroup", &dir).unwrap_err().kind,
            AgentErrorKind::NotFound
        );
        assert_eq!(
            resolve("", &dir).unwrap_err().kind,
            AgentErrorKind::InvalidRequest
        );
        assert_eq!(
            resolve("app:", &dir).unwrap_err().kind,
            AgentErrorKind::InvalidRequest
        );
        assert_eq!(
            resolve(":1", &dir).unwrap_err().kind,
            AgentErrorKind::InvalidRequest
        );
        let missing = resolve("app", Path::new("/nonexistent-etc")).unwrap_err();
        assert_eq!(missing.kind, AgentErrorKind::NotFound);
        assert!(
            missing.message.contains("/nonexistent-etc/passwd"),
            "{}",
            missing.message
        );
    }
}
