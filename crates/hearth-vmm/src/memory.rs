//! Guest memory files: sparse copies, and the per-microVM memory diff.
//!
//! Owns every byte of guest RAM that Hearth writes to disk. Functions here are
//! blocking (file and `/proc` I/O) and run on the backend's task via
//! `spawn_blocking`, always while the QEMU in question is stopped.
//!
//! A clone maps its snapshot's memory file privately (`share=off`): the page
//! cache holds one copy of the image for every clone, and a page the guest
//! writes becomes a private anonymous copy inside that QEMU. Those anonymous
//! pages are *exactly* what differs from the image. `/proc/<pid>/pagemap`
//! tells them apart (bit 61 "file page or shared anon" is clear for them), so
//! suspend saves only them ([`MemoryDiff`]), and resume maps the image again
//! and writes them back with `process_vm_writev` before the guest runs.
//! Suspend cost and suspended size scale with what the guest changed, not
//! with its memory size.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::jsonfile::JsonFileError;

/// Host page size assumed for pagemap arithmetic (x86_64).
pub const PAGE_SIZE_BYTES: u64 = 4096;
/// Largest single copy buffer.
const COPY_CHUNK_BYTES: usize = 4 << 20;

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE_OR_SHARED: u64 = 1 << 61;

/// Memory file failures.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("guest RAM mapping ({key:?}) not found in QEMU process {pid}")]
    MappingNotFound { pid: u32, key: FileKey },
    #[error("memory diff {path} is invalid: {reason}")]
    InvalidDiff { path: PathBuf, reason: String },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> MemoryError {
    let path = path.to_path_buf();
    move |source| MemoryError::Io { op, path, source }
}

/// The guest RAM mapping inside a QEMU process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamMapping {
    pub pid: u32,
    pub host_addr: u64,
    pub len_bytes: u64,
}

/// Which file a mapping maps: device and inode, as `/proc/<pid>/maps`
/// shows them (paths there depend on the mapping process's mount
/// namespace; a memfd has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileKey {
    pub dev_major: u32,
    pub dev_minor: u32,
    pub ino: u64,
}

impl FileKey {
    /// The key of an open file.
    pub fn of(f: &impl AsRawFd) -> io::Result<FileKey> {
        // SAFETY: stat is plain data that fstat fills.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is valid for writes; the fd is open.
        if unsafe { libc::fstat(f.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(FileKey {
            dev_major: libc::major(st.st_dev),
            dev_minor: libc::minor(st.st_dev),
            ino: st.st_ino,
        })
    }

    /// The key of the file at `path`.
    pub fn of_path(path: &Path) -> Result<FileKey, MemoryError> {
        let f = File::open(path).map_err(io_err("open", path))?;
        FileKey::of(&f).map_err(io_err("stat", path))
    }
}

/// Find QEMU's mapping of guest RAM: the mapping of `key` at least
/// `len_bytes` long.
pub fn find_ram_mapping(pid: u32, key: FileKey, len_bytes: u64) -> Result<RamMapping, MemoryError> {
    let maps_path = PathBuf::from(format!("/proc/{pid}/maps"));
    let maps = std::fs::read_to_string(&maps_path).map_err(io_err("read", &maps_path))?;
    for line in maps.lines() {
        // start-end perms offset dev inode path
        let mut fields = line.split_whitespace();
        let (Some(range), _, _, Some(dev), Some(ino)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let Some((maj, min)) = dev.split_once(':') else {
            continue;
        };
        let same = u32::from_str_radix(maj, 16) == Ok(key.dev_major)
            && u32::from_str_radix(min, 16) == Ok(key.dev_minor)
            && ino.parse::<u64>() == Ok(key.ino);
        if !same {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        if end - start >= len_bytes {
            return Ok(RamMapping {
                pid,
                host_addr: start,
                len_bytes,
            });
        }
    }
    Err(MemoryError::MappingNotFound { pid, key })
}

/// A run of consecutive pages: (first page index, page count).
pub type PageRun = (u64, u64);

/// Pages of a private mapping that the guest has written (anonymous copies).
pub fn dirty_pages(map: &RamMapping) -> Result<Vec<PageRun>, MemoryError> {
    let path = PathBuf::from(format!("/proc/{}/pagemap", map.pid));
    let f = File::open(&path).map_err(io_err("open", &path))?;
    let pages = map.len_bytes / PAGE_SIZE_BYTES;
    let first = map.host_addr / PAGE_SIZE_BYTES;
    let mut runs: Vec<PageRun> = Vec::new();
    let batch_pages = 64 * 1024u64;
    let mut buf = vec![0u8; (batch_pages * 8) as usize];
    let mut done = 0u64;
    while done < pages {
        let n = batch_pages.min(pages - done);
        let bytes = &mut buf[..(n * 8) as usize];
        f.read_exact_at(bytes, (first + done) * 8)
            .map_err(io_err("read", &path))?;
        for (i, e) in bytes.chunks_exact(8).enumerate() {
            let entry = u64::from_le_bytes(e.try_into().expect("8-byte chunk"));
            let dirty = (entry & PM_PRESENT != 0 && entry & PM_FILE_OR_SHARED == 0)
                || entry & PM_SWAPPED != 0;
            if dirty {
                let page = done + i as u64;
                match runs.last_mut() {
                    Some((start, count)) if *start + *count == page => *count += 1,
                    _ => runs.push((page, 1)),
                }
            }
        }
        done += n;
    }
    Ok(runs)
}

fn remote_io(map: &RamMapping, offset: u64, buf: &mut [u8], write: bool) -> io::Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let local = libc::iovec {
            iov_base: buf[done..].as_mut_ptr().cast(),
            iov_len: buf.len() - done,
        };
        let remote = libc::iovec {
            iov_base: (map.host_addr + offset + done as u64) as *mut libc::c_void,
            iov_len: buf.len() - done,
        };
        // SAFETY: `local` points into `buf`, valid for `iov_len` bytes for the
        // duration of the call; `remote` names memory in another process, which
        // the kernel validates (we never dereference it ourselves).
        let n = unsafe {
            if write {
                libc::process_vm_writev(map.pid as libc::pid_t, &local, 1, &remote, 1, 0)
            } else {
                libc::process_vm_readv(map.pid as libc::pid_t, &local, 1, &remote, 1, 0)
            }
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "short remote transfer",
            ));
        }
        done += n as usize;
    }
    Ok(())
}

/// Which pages a memory diff holds; stored beside the data file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryDiff {
    pub version: u32,
    pub page_size_bytes: u64,
    pub mem_size_bytes: u64,
    /// Runs of pages, sorted, non-overlapping.
    pub runs: Vec<PageRun>,
}

impl MemoryDiff {
    pub const VERSION: u32 = 1;

    #[cfg(test)]
    pub fn dirty_bytes(&self) -> u64 {
        self.runs
            .iter()
            .map(|(_, n)| n * self.page_size_bytes)
            .sum()
    }

    fn validate(&self, path: &Path) -> Result<(), MemoryError> {
        let bad = |reason: String| MemoryError::InvalidDiff {
            path: path.to_path_buf(),
            reason,
        };
        if self.version != Self::VERSION {
            return Err(bad(format!(
                "version {} (expected {})",
                self.version,
                Self::VERSION
            )));
        }
        if self.page_size_bytes != PAGE_SIZE_BYTES {
            return Err(bad(format!("page size {}", self.page_size_bytes)));
        }
        let pages = self.mem_size_bytes / PAGE_SIZE_BYTES;
        let mut next = 0u64;
        for &(start, count) in &self.runs {
            if start < next || count == 0 || start.checked_add(count).is_none_or(|e| e > pages) {
                return Err(bad(format!("bad run ({start}, {count})")));
            }
            next = start + count;
        }
        Ok(())
    }

    /// Write the run list atomically and durably (as every record:
    /// [`crate::jsonfile`], which also fsyncs the generation directory).
    pub fn save(&self, path: &Path) -> Result<(), MemoryError> {
        crate::jsonfile::save_json(path, self).map_err(|e| match e {
            JsonFileError::Io { op, path, source } => MemoryError::Io { op, path, source },
            JsonFileError::Invalid { reason, .. } => MemoryError::InvalidDiff {
                path: path.into(),
                reason,
            },
        })
    }

    /// Read a run list: its version checked first, then its runs.
    pub fn load(path: &Path) -> Result<Self, MemoryError> {
        let diff: Self =
            crate::jsonfile::load_json(path, "memory diff", Self::VERSION, |d: &Self| d.version)
                .map_err(|e| MemoryError::InvalidDiff {
                    path: path.into(),
                    reason: match e {
                        JsonFileError::Invalid { reason, .. } => reason,
                        other => other.to_string(),
                    },
                })?;
        diff.validate(path)?;
        Ok(diff)
    }
}

/// Copy the given pages out of a (stopped) QEMU into `data_path`, a sparse
/// file laid out like guest RAM. Returns the diff description.
pub fn save_pages(
    map: &RamMapping,
    runs: &[PageRun],
    data_path: &Path,
) -> Result<MemoryDiff, MemoryError> {
    let f = File::create(data_path).map_err(io_err("create", data_path))?;
    f.set_len(map.len_bytes)
        .map_err(io_err("truncate", data_path))?;
    copy_pages_to_file(map, runs, &f, data_path)?;
    f.sync_all().map_err(io_err("sync", data_path))?;
    Ok(MemoryDiff {
        version: MemoryDiff::VERSION,
        page_size_bytes: PAGE_SIZE_BYTES,
        mem_size_bytes: map.len_bytes,
        runs: runs.to_vec(),
    })
}

fn copy_pages_to_file(
    map: &RamMapping,
    runs: &[PageRun],
    f: &File,
    path: &Path,
) -> Result<(), MemoryError> {
    let mut buf = vec![0u8; COPY_CHUNK_BYTES];
    for_each_chunk(runs, |offset, len| {
        let b = &mut buf[..len];
        remote_io(map, offset, b, false).map_err(io_err("read guest memory for", path))?;
        f.write_all_at(b, offset).map_err(io_err("write", path))
    })
}

/// Write a saved diff into a freshly started, not yet running QEMU.
pub fn apply_diff(
    map: &RamMapping,
    diff: &MemoryDiff,
    data_path: &Path,
) -> Result<(), MemoryError> {
    if diff.mem_size_bytes != map.len_bytes {
        return Err(MemoryError::InvalidDiff {
            path: data_path.into(),
            reason: format!(
                "diff is for {} bytes of RAM, guest has {}",
                diff.mem_size_bytes, map.len_bytes
            ),
        });
    }
    let f = File::open(data_path).map_err(io_err("open", data_path))?;
    let mut buf = vec![0u8; COPY_CHUNK_BYTES];
    for_each_chunk(&diff.runs, |offset, len| {
        let b = &mut buf[..len];
        f.read_exact_at(b, offset)
            .map_err(io_err("read", data_path))?;
        remote_io(map, offset, b, true).map_err(io_err("write guest memory from", data_path))
    })
}

fn for_each_chunk(
    runs: &[PageRun],
    mut f: impl FnMut(u64, usize) -> Result<(), MemoryError>,
) -> Result<(), MemoryError> {
    for &(start, count) in runs {
        let mut offset = start * PAGE_SIZE_BYTES;
        let end = (start + count) * PAGE_SIZE_BYTES;
        while offset < end {
            let len = ((end - offset) as usize).min(COPY_CHUNK_BYTES);
            f(offset, len)?;
            offset += len as u64;
        }
    }
    Ok(())
}

/// The data regions of a file, as (start, end) byte offsets (SEEK_DATA /
/// SEEK_HOLE): everything else is holes.
fn data_regions(f: &File, path: &Path) -> Result<Vec<(i64, i64)>, MemoryError> {
    let len = f.metadata().map_err(io_err("stat", path))?.len() as i64;
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    while pos < len {
        // SAFETY: lseek on a valid fd we own; no memory is passed.
        let data = unsafe { libc::lseek(f.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole remains
            }
            return Err(io_err("seek", path)(e));
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(f.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io_err("seek", path)(io::Error::last_os_error()));
        }
        out.push((data, hole));
        pos = hole;
    }
    Ok(out)
}

/// Copy a file, preserving holes (SEEK_DATA/SEEK_HOLE + copy_file_range).
pub fn sparse_copy(src: &Path, dst: &Path) -> Result<u64, MemoryError> {
    let s = File::open(src).map_err(io_err("open", src))?;
    let d = File::create(dst).map_err(io_err("create", dst))?;
    let len = s.metadata().map_err(io_err("stat", src))?.len();
    d.set_len(len).map_err(io_err("truncate", dst))?;
    let mut copied = 0u64;
    for (data, hole) in data_regions(&s, src)? {
        let mut off_in = data;
        let mut off_out = data;
        while off_in < hole {
            // SAFETY: valid fds; the offsets are plain integers owned by this frame.
            let n = unsafe {
                libc::copy_file_range(
                    s.as_raw_fd(),
                    &mut off_in,
                    d.as_raw_fd(),
                    &mut off_out,
                    (hole - off_in) as usize,
                    0,
                )
            };
            if n < 0 {
                return Err(io_err("copy", dst)(io::Error::last_os_error()));
            }
            if n == 0 {
                break;
            }
            copied += n as u64;
        }
    }
    Ok(copied)
}

/// A sealed in-memory copy of a snapshot's memory file.
///
/// Clones map a snapshot's RAM privately. QEMU 7.2 opens the backing file
/// read-write even for a private mapping, and a confined QEMU must not be
/// able to write the snapshot every other clone maps. A memfd sealed
/// against writes, growth and shrinking gives it exactly what it needs: it
/// can open and map it privately (copy-on-write), and any write through
/// the file is refused (`EPERM`). Holes stay holes; the file's page cache
/// is dropped afterwards, so the pages are held once. Returns the memfd.
pub fn sealed_image(src: &Path, name: &str) -> Result<OwnedFd, MemoryError> {
    let s = File::open(src).map_err(io_err("open", src))?;
    let len = s.metadata().map_err(io_err("stat", src))?.len();
    let cname = std::ffi::CString::new(format!("hearth-{name}")).expect("no NUL in a name");
    // SAFETY: memfd_create takes a NUL-terminated name and flags.
    let fd =
        unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io_err("create a memfd for", src)(io::Error::last_os_error()));
    }
    // SAFETY: memfd_create returned a new descriptor that we now own.
    let m = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    m.set_len(len).map_err(io_err("size the memfd for", src))?;
    let mut buf = vec![0u8; COPY_CHUNK_BYTES];
    for (data, hole) in data_regions(&s, src)? {
        let mut off = data as u64;
        while off < hole as u64 {
            let n = ((hole as u64 - off) as usize).min(buf.len());
            s.read_exact_at(&mut buf[..n], off)
                .map_err(io_err("read", src))?;
            m.write_all_at(&buf[..n], off)
                .map_err(io_err("fill the memfd for", src))?;
            off += n as u64;
        }
    }
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS on our memfd takes an integer.
    if unsafe { libc::fcntl(m.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io_err("seal the memfd for", src)(io::Error::last_os_error()));
    }
    // SAFETY: advice on our own descriptor; no memory is passed.
    unsafe { libc::posix_fadvise(s.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    Ok(m.into())
}

/// Build a stand-alone memory file: `base` with a running private QEMU's
/// written pages laid over it.
pub fn materialize(base: &Path, map: &RamMapping, dst: &Path) -> Result<u64, MemoryError> {
    sparse_copy(base, dst)?;
    let runs = dirty_pages(map)?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dst)
        .map_err(io_err("open", dst))?;
    copy_pages_to_file(map, &runs, &f, dst)?;
    Ok(runs.iter().map(|(_, n)| n * PAGE_SIZE_BYTES).sum())
}

/// Bytes actually allocated on disk for a file.
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn diff_round_trips_and_validates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.json");
        let d = MemoryDiff {
            version: MemoryDiff::VERSION,
            page_size_bytes: PAGE_SIZE_BYTES,
            mem_size_bytes: 1 << 20,
            runs: vec![(0, 2), (10, 3)],
        };
        d.save(&p).unwrap();
        assert_eq!(MemoryDiff::load(&p).unwrap(), d);
        assert_eq!(d.dirty_bytes(), 5 * 4096);
        assert!(
            !dir.path().join("d.json.tmp").exists(),
            "a temporary file left"
        );
        // Another version is refused by name, before its shape.
        let mut v = serde_json::to_value(&d).unwrap();
        v["version"] = 9.into();
        v["runs"] = "not runs".into();
        std::fs::write(&p, v.to_string()).unwrap();
        let e = MemoryDiff::load(&p).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
        for runs in [vec![(0, 2), (1, 1)], vec![(255, 2)], vec![(3, 0)]] {
            let bad = MemoryDiff { runs, ..d.clone() };
            bad.save(&p).unwrap();
            assert!(matches!(
                MemoryDiff::load(&p),
                Err(MemoryError::InvalidDiff { .. })
            ));
        }
    }

    #[test]
    fn sparse_copy_keeps_holes_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let mut f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"hello", 1 << 20).unwrap();
        f.write_all_at(b"world", 40 << 20).unwrap();
        f.flush().unwrap();
        let dst = dir.path().join("dst");
        sparse_copy(&src, &dst).unwrap();
        let d = File::open(&dst).unwrap();
        let mut b = [0u8; 5];
        d.read_exact_at(&mut b, 1 << 20).unwrap();
        assert_eq!(&b, b"hello");
        d.read_exact_at(&mut b, 40 << 20).unwrap();
        assert_eq!(&b, b"world");
        assert_eq!(d.metadata().unwrap().len(), 64 << 20);
        assert!(allocated_bytes(&dst) < 1 << 20, "holes were filled");
    }

    #[test]
    fn sealed_images_keep_data_and_holes_and_refuse_writes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("memory");
        let f = File::create(&src).unwrap();
        f.set_len(32 << 20).unwrap();
        f.write_all_at(b"guest", 3 << 20).unwrap();
        let m = File::from(sealed_image(&src, "t").unwrap());
        let mut b = [0u8; 5];
        m.read_exact_at(&mut b, 3 << 20).unwrap();
        assert_eq!(&b, b"guest");
        assert_eq!(m.metadata().unwrap().len(), 32 << 20);
        assert!(
            m.metadata().unwrap().blocks() * 512 < 1 << 20,
            "holes were filled"
        );
        let err = m.write_all_at(b"x", 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        assert!(m.set_len(1).is_err());
        // Reopened read-write (as QEMU does through /proc/self/fd), still refused.
        let again = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/self/fd/{}", m.as_raw_fd()))
            .unwrap();
        assert_eq!(
            again.write_all_at(b"x", 0).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
    }

    /// The pagemap logic on our own process: a private file mapping whose
    /// written pages become anonymous, exactly as in a clone's QEMU.
    #[test]
    fn finds_written_pages_of_a_private_file_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem");
        let len = 64 * PAGE_SIZE_BYTES;
        let f = File::create(&path).unwrap();
        f.set_len(len).unwrap();
        f.write_all_at(&[7u8; 4096], 5 * PAGE_SIZE_BYTES).unwrap();
        let f = File::open(&path).unwrap();
        // SAFETY: mapping a file we just created, privately, for this test only;
        // the mapping is unmapped before the function returns.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        let mem = ptr as *mut u8;
        // SAFETY: all offsets are within the `len`-byte mapping.
        unsafe {
            let _read = std::ptr::read_volatile(mem.add(5 * 4096)); // read only: stays a file page
            std::ptr::write_volatile(mem.add(2 * 4096), 1); // written: anonymous copy
            std::ptr::write_volatile(mem.add(3 * 4096 + 17), 2);
            std::ptr::write_volatile(mem.add(9 * 4096), 3);
        }
        let map = find_ram_mapping(std::process::id(), FileKey::of(&f).unwrap(), len).unwrap();
        assert_eq!(map.host_addr, ptr as u64);
        let runs = dirty_pages(&map).unwrap();
        assert_eq!(runs, vec![(2, 2), (9, 1)]);

        // Save them and apply onto a second private mapping of the same file.
        let data = dir.path().join("diff");
        let diff = save_pages(&map, &runs, &data).unwrap();
        // SAFETY: as above; a second private mapping of the same file.
        let ptr2 = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr2, libc::MAP_FAILED);
        let map2 = RamMapping {
            pid: map.pid,
            host_addr: ptr2 as u64,
            len_bytes: len,
        };
        apply_diff(&map2, &diff, &data).unwrap();
        let mem2 = ptr2 as *const u8;
        // SAFETY: offsets within the mapping.
        unsafe {
            assert_eq!(*mem2.add(2 * 4096), 1);
            assert_eq!(*mem2.add(3 * 4096 + 17), 2);
            assert_eq!(*mem2.add(9 * 4096), 3);
            assert_eq!(*mem2.add(5 * 4096), 7);
            libc::munmap(ptr, len as usize);
            libc::munmap(ptr2, len as usize);
        }
        // The file itself never changed.
        let mut b = [0u8; 1];
        File::open(&path)
            .unwrap()
            .read_exact_at(&mut b, 2 * 4096)
            .unwrap();
        assert_eq!(b[0], 0);
    }
}
