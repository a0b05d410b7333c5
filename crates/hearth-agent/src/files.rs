//! `WriteFile` and `ReadFile` (run inline on the reader thread).
//!
//! `WriteFile` creates a missing file with the requested mode, or
//! [`DEFAULT_FILE_MODE`] when the request names none (exactly that mode,
//! whatever the umask); an existing file keeps its mode.
//!
//! Only regular files are read or written: files are opened with
//! `O_NONBLOCK` and checked with `fstat` first, so a FIFO or device named by
//! the host can never block the reader thread.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use hearth_proto::{
    AgentError, ReadFileRequest, Response, WriteFileRequest, DEFAULT_FILE_MODE, MAX_CHUNK_BYTES,
};

use crate::errors::{check_path, invalid, io_error};

/// Mode of directories made by `create_parents`.
const PARENT_DIR_MODE: u32 = 0o755;
/// Largest offset + length (`off_t` is signed).
const MAX_FILE_END: u64 = i64::MAX as u64;

const OPEN_FLAGS: i32 = libc::O_NONBLOCK | libc::O_NOCTTY;

fn check_regular(file: &File, path: &str) -> Result<(), AgentError> {
    let meta = file
        .metadata()
        .map_err(|e| io_error(format_args!("stat {path}"), &e))?;
    if meta.is_dir() {
        return Err(invalid(format_args!("{path} is a directory")));
    }
    if !meta.is_file() {
        return Err(invalid(format_args!("{path} is not a regular file")));
    }
    Ok(())
}

/// Handle `WriteFile`.
pub(crate) fn write(req: &WriteFileRequest) -> Result<Response, AgentError> {
    let path = req.path.as_str();
    check_path("path", path)?;
    if req.data.len() > MAX_CHUNK_BYTES {
        return Err(invalid(format_args!(
            "{} bytes of data exceed the {MAX_CHUNK_BYTES}-byte chunk limit",
            req.data.len()
        )));
    }
    let mode = req.mode.unwrap_or(DEFAULT_FILE_MODE);
    if mode & !0o7777 != 0 {
        return Err(invalid(format_args!(
            "mode {mode:o} is not a permission mode"
        )));
    }
    let end = req.offset.checked_add(req.data.len() as u64);
    if !matches!(end, Some(end) if end <= MAX_FILE_END) {
        return Err(invalid(format_args!(
            "offset {} + {} bytes is past the largest file size",
            req.offset,
            req.data.len()
        )));
    }
    if req.create_parents {
        if let Some(parent) = Path::new(path).parent() {
            DirBuilder::new()
                .recursive(true)
                .mode(PARENT_DIR_MODE)
                .create(parent)
                .map_err(|e| io_error(format_args!("create directory {}", parent.display()), &e))?;
        }
    }
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(OPEN_FLAGS)
        .open(path);
    let (file, created) = match created {
        Ok(file) => (file, true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let file = OpenOptions::new()
                .write(true)
                .custom_flags(OPEN_FLAGS)
                .open(path)
                .map_err(|e| io_error(format_args!("open {path}"), &e))?;
            (file, false)
        }
        Err(e) => return Err(io_error(format_args!("create {path}"), &e)),
    };
    check_regular(&file, path)?;
    if created {
        // The umask may have cleared bits; the host asked for exactly these.
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(|e| io_error(format_args!("chmod {path}"), &e))?;
    }
    if req.truncate {
        file.set_len(0)
            .map_err(|e| io_error(format_args!("truncate {path}"), &e))?;
    }
    file.write_all_at(&req.data, req.offset)
        .map_err(|e| io_error(format_args!("write {path} at offset {}", req.offset), &e))?;
    if let Some((uid, gid)) = req.owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
            .map_err(|e| io_error(format_args!("chown {path} to {uid}:{gid}"), &e))?;
    }
    Ok(Response::WriteFile {
        bytes_written: req.data.len() as u64,
    })
}

/// Handle `ReadFile`.
pub(crate) fn read(req: &ReadFileRequest) -> Result<Response, AgentError> {
    let path = req.path.as_str();
    check_path("path", path)?;
    let max_len = req.max_len as usize;
    if max_len > MAX_CHUNK_BYTES {
        return Err(invalid(format_args!(
            "max_len {max_len} exceeds the {MAX_CHUNK_BYTES}-byte chunk limit"
        )));
    }
    if req.offset > MAX_FILE_END - max_len as u64 {
        return Err(invalid(format_args!(
            "offset {} is past the largest file size",
            req.offset
        )));
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(OPEN_FLAGS)
        .open(path)
        .map_err(|e| io_error(format_args!("open {path}"), &e))?;
    check_regular(&file, path)?;
    let mut data = vec![0u8; max_len];
    let mut got = 0;
    let mut hit_end = false;
    while got < max_len {
        match file.read_at(&mut data[got..], req.offset + got as u64) {
            Ok(0) => {
                hit_end = true;
                break;
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(io_error(
                    format_args!("read {path} at offset {}", req.offset + got as u64),
                    &e,
                ))
            }
        }
    }
    data.truncate(got);
    // A full buffer may end exactly at EOF: probe one byte to tell.
    let eof = hit_end || {
        let mut probe = [0u8; 1];
        loop {
            match file.read_at(&mut probe, req.offset + got as u64) {
                Ok(n) => break n == 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(format_args!("read {path}"), &e)),
            }
        }
    };
    Ok(Response::ReadFile { data, eof })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_proto::AgentErrorKind;
    use std::os::unix::fs::MetadataExt;

    fn tmp(name: &str) -> String {
        let dir = std::env::temp_dir().join(format!("hearth-agent-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name).to_string_lossy().into_owned()
    }

    #[test]
    fn created_files_get_exactly_the_requested_mode() {
        let path = tmp("mode/sub/f");
        let _ = std::fs::remove_file(&path);
        let r = write(&WriteFileRequest {
            path: path.clone(),
            data: b"x".to_vec(),
            mode: Some(0o4777),
            create_parents: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r, Response::WriteFile { bytes_written: 1 });
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o4777);
        let parent = Path::new(&path).parent().unwrap();
        assert_eq!(std::fs::metadata(parent).unwrap().mode() & 0o777, 0o755);
    }

    #[test]
    fn files_without_a_mode_are_created_0644_and_existing_ones_keep_theirs() {
        let path = tmp("default-mode");
        let _ = std::fs::remove_file(&path);
        write(&WriteFileRequest {
            path: path.clone(),
            data: b"x".to_vec(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o644);
        std::fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
        write(&WriteFileRequest {
            path: path.clone(),
            data: b"y".to_vec(),
            mode: Some(0o777),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
    }

    #[test]
    fn non_regular_files_are_refused() {
        let dir = std::env::temp_dir().to_string_lossy().into_owned();
        let e = read(&ReadFileRequest {
            path: dir,
            offset: 0,
            max_len: 10,
        })
        .unwrap_err();
        assert_eq!(e.kind, AgentErrorKind::InvalidRequest);
        let fifo = tmp("fifo");
        let _ = std::fs::remove_file(&fifo);
        let c = std::ffi::CString::new(fifo.clone()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path only.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Neither call may block on the reader-less FIFO.
        let e = read(&ReadFileRequest {
            path: fifo.clone(),
            offset: 0,
            max_len: 10,
        })
        .unwrap_err();
        assert_eq!(e.kind, AgentErrorKind::InvalidRequest, "{}", e.message);
        assert!(write(&WriteFileRequest {
            path: fifo,
            data: b"x".to_vec(),
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn bounds_are_checked() {
        let e = write(&WriteFileRequest {
            path: tmp("big"),
            data: vec![0; MAX_CHUNK_BYTES + 1],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.kind, AgentErrorKind::InvalidRequest);
        let e = write(&WriteFileRequest {
            path: tmp("off"),
            data: vec![0; 2],
            offset: u64::MAX - 1,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.kind, AgentErrorKind::InvalidRequest);
        let e = write(&WriteFileRequest {
            path: tmp("mode"),
            mode: Some(0o10000),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.kind, AgentErrorKind::InvalidRequest);
        let e = read(&ReadFileRequest {
            path: tmp("off"),
            offset: u64::MAX,
            max_len: 1,
        })
        .unwrap_err();
        assert_eq!(e.kind, AgentErrorKind::InvalidRequest);
    }
}
