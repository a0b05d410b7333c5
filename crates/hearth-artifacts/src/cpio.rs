//! The "newc" cpio format (the one the Linux kernel unpacks as an initramfs):
//! a writer, and a reader for inspection and tests.
//!
//! ```text
//!  "070701" + 13 fields of 8 uppercase hex digits:
//!    ino mode uid gid nlink mtime filesize devmajor devminor
//!    rdevmajor rdevminor namesize(incl. NUL) check(0)
//!  name + NUL, padded with NULs to a multiple of 4 (counting the 110-byte header)
//!  data, padded with NULs to a multiple of 4
//!  ... last entry: "TRAILER!!!" with every field 0 except nlink=1, namesize
//! ```
//!
//! Names are written without a leading `/`. The kernel does not create
//! missing parent directories, so a directory must come before its contents.
//! Every entry is owned by root with mtime 0, so the same entries always give
//! the same bytes.

use std::io::{self, Write};

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFMT: u32 = 0o170_000;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Directory,
    File(Vec<u8>),
    CharDevice { major: u32, minor: u32 },
    Symlink(String),
}

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the archive, e.g. `dev/console` (a leading `/` is dropped).
    pub path: String,
    /// Permission bits (e.g. `0o755`); the file type comes from `kind`.
    pub perm: u32,
    pub kind: EntryKind,
}

impl Entry {
    pub fn dir(path: &str, perm: u32) -> Self {
        Entry {
            path: path.into(),
            perm,
            kind: EntryKind::Directory,
        }
    }

    pub fn file(path: &str, perm: u32, data: Vec<u8>) -> Self {
        Entry {
            path: path.into(),
            perm,
            kind: EntryKind::File(data),
        }
    }

    pub fn char_device(path: &str, perm: u32, major: u32, minor: u32) -> Self {
        Entry {
            path: path.into(),
            perm,
            kind: EntryKind::CharDevice { major, minor },
        }
    }

    pub fn symlink(path: &str, target: &str) -> Self {
        Entry {
            path: path.into(),
            perm: 0o777,
            kind: EntryKind::Symlink(target.into()),
        }
    }

    /// The full `st_mode`: file type bits and permission bits.
    pub fn mode(&self) -> u32 {
        let t = match self.kind {
            EntryKind::Directory => S_IFDIR,
            EntryKind::File(_) => S_IFREG,
            EntryKind::CharDevice { .. } => S_IFCHR,
            EntryKind::Symlink(_) => S_IFLNK,
        };
        t | (self.perm & 0o7777)
    }
}

fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

struct Header<'a> {
    ino: u32,
    mode: u32,
    nlink: u32,
    filesize: u32,
    rdevmajor: u32,
    rdevminor: u32,
    name: &'a str,
}

/// Counts what goes through it.
struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Counting<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn header(&mut self, h: &Header<'_>) -> io::Result<()> {
        let namesize = h.name.len() + 1;
        let fields = [
            h.ino,
            h.mode,
            0,
            0,
            h.nlink,
            0,
            h.filesize,
            0,
            0,
            h.rdevmajor,
            h.rdevminor,
            u32::try_from(namesize).map_err(|_| invalid("name too long"))?,
            0,
        ];
        let mut hdr = Vec::with_capacity(HEADER_LEN + namesize + 3);
        hdr.extend_from_slice(MAGIC);
        for f in fields {
            hdr.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        hdr.extend_from_slice(h.name.as_bytes());
        hdr.push(0);
        hdr.resize(hdr.len() + pad4(HEADER_LEN + namesize), 0);
        self.put(&hdr)
    }

    fn data(&mut self, data: &[u8]) -> io::Result<()> {
        self.put(data)?;
        self.put(&[0u8; 3][..pad4(data.len())])
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}

/// Writes `entries` followed by the trailer as a newc archive to `out`;
/// returns the number of bytes written.
///
/// Refuses (with `InvalidInput`) empty paths, paths containing NUL or `..`,
/// and members larger than 4 GiB.
pub fn write_newc<W: Write>(entries: &[Entry], out: W) -> io::Result<u64> {
    let mut w = Counting {
        inner: out,
        written: 0,
    };
    for (i, e) in entries.iter().enumerate() {
        let name = e.path.trim_start_matches('/');
        if name.is_empty() || name.contains('\0') || name.split('/').any(|c| c == "..") {
            return Err(invalid(&format!("bad cpio member path {:?}", e.path)));
        }
        let ino = u32::try_from(i + 1).map_err(|_| invalid("too many members"))?;
        let (data, nlink, rdev): (&[u8], u32, (u32, u32)) = match &e.kind {
            EntryKind::Directory => (&[], 2, (0, 0)),
            EntryKind::File(d) => (d, 1, (0, 0)),
            EntryKind::CharDevice { major, minor } => (&[], 1, (*major, *minor)),
            EntryKind::Symlink(t) => (t.as_bytes(), 1, (0, 0)),
        };
        let filesize =
            u32::try_from(data.len()).map_err(|_| invalid("member larger than 4 GiB"))?;
        w.header(&Header {
            ino,
            mode: e.mode(),
            nlink,
            filesize,
            rdevmajor: rdev.0,
            rdevminor: rdev.1,
            name,
        })?;
        w.data(data)?;
    }
    w.header(&Header {
        ino: 0,
        mode: 0,
        nlink: 1,
        filesize: 0,
        rdevmajor: 0,
        rdevminor: 0,
        name: TRAILER,
    })?;
    w.inner.flush()?;
    Ok(w.written)
}

/// A member read back by [`read_newc`], with every header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEntry {
    pub name: String,
    pub ino: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub rdevmajor: u32,
    pub rdevminor: u32,
    pub data: Vec<u8>,
}

impl ReadEntry {
    /// The entry as an [`Entry`], if its type is one this module writes.
    pub fn to_entry(&self) -> Option<Entry> {
        let perm = self.mode & 0o7777;
        let kind = match self.mode & S_IFMT {
            S_IFDIR => EntryKind::Directory,
            S_IFREG => EntryKind::File(self.data.clone()),
            S_IFCHR => EntryKind::CharDevice {
                major: self.rdevmajor,
                minor: self.rdevminor,
            },
            S_IFLNK => EntryKind::Symlink(String::from_utf8(self.data.clone()).ok()?),
            _ => return None,
        };
        Some(Entry {
            path: self.name.clone(),
            perm,
            kind,
        })
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Parses a newc archive up to its trailer, checking magic, field syntax,
/// the NUL terminator of names and that padding bytes are zero.
pub fn read_newc(bytes: &[u8]) -> io::Result<Vec<ReadEntry>> {
    let mut pos = 0usize;
    let mut out = Vec::new();
    let take = |pos: &mut usize, n: usize| -> io::Result<&[u8]> {
        let s = bytes
            .get(*pos..*pos + n)
            .ok_or_else(|| bad("truncated archive"))?;
        *pos += n;
        Ok(s)
    };
    let skip_pad = |pos: &mut usize, n: usize| -> io::Result<()> {
        let p = bytes
            .get(*pos..*pos + n)
            .ok_or_else(|| bad("truncated padding"))?;
        if p.iter().any(|&b| b != 0) {
            return Err(bad(format!("non-zero padding at offset {}", *pos)));
        }
        *pos += n;
        Ok(())
    };
    loop {
        if pos & 3 != 0 {
            return Err(bad(format!("header at unaligned offset {pos}")));
        }
        let hdr = take(&mut pos, HEADER_LEN)?;
        if &hdr[..6] != MAGIC {
            return Err(bad(format!("bad magic at offset {}", pos - HEADER_LEN)));
        }
        let mut f = [0u32; 13];
        for (i, v) in f.iter_mut().enumerate() {
            let s = std::str::from_utf8(&hdr[6 + 8 * i..14 + 8 * i])
                .map_err(|_| bad("non-ASCII header"))?;
            if !s
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
            {
                return Err(bad(format!("bad header field {s:?}")));
            }
            *v = u32::from_str_radix(s, 16).map_err(|_| bad("bad header field"))?;
        }
        let namesize = f[11] as usize;
        if namesize == 0 {
            return Err(bad("empty name"));
        }
        let raw_name = take(&mut pos, namesize)?;
        if raw_name[namesize - 1] != 0 {
            return Err(bad("name not NUL-terminated"));
        }
        let name = String::from_utf8(raw_name[..namesize - 1].to_vec())
            .map_err(|_| bad("non-UTF-8 name"))?;
        skip_pad(&mut pos, pad4(HEADER_LEN + namesize))?;
        let filesize = f[6] as usize;
        let data = take(&mut pos, filesize)?.to_vec();
        skip_pad(&mut pos, pad4(filesize))?;
        if name == TRAILER {
            return Ok(out);
        }
        out.push(ReadEntry {
            name,
            ino: f[0],
            mode: f[1],
            uid: f[2],
            gid: f[3],
            nlink: f[4],
            mtime: f[5],
            rdevmajor: f[9],
            rdevminor: f[10],
            data,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Entry> {
        vec![
            Entry::dir("/dev", 0o755),
            Entry::char_device("dev/console", 0o600, 5, 1),
            Entry::file("init", 0o755, b"\x7fELF....".to_vec()),
            Entry::file("a", 0o644, Vec::new()),
            Entry::file("ab", 0o644, b"1".to_vec()),
            Entry::file("abc", 0o644, b"12".to_vec()),
            Entry::file("abcd", 0o644, b"123".to_vec()),
            Entry::file("abcde", 0o644, b"1234".to_vec()),
            Entry::symlink("bin/sh", "busybox"),
        ]
    }

    #[test]
    fn round_trip() {
        let entries = sample();
        let mut buf = Vec::new();
        let n = write_newc(&entries, &mut buf).unwrap();
        assert_eq!(n as usize, buf.len());
        assert_eq!(buf.len() % 4, 0);
        let back = read_newc(&buf).unwrap();
        let mut expected = entries.clone();
        expected[0].path = "dev".into(); // leading '/' dropped
        let got: Vec<Entry> = back.iter().map(|e| e.to_entry().unwrap()).collect();
        assert_eq!(got, expected);
        for (i, e) in back.iter().enumerate() {
            assert_eq!(e.ino as usize, i + 1);
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0));
        }
        assert_eq!(back[0].mode, 0o040755);
        assert_eq!(back[0].nlink, 2);
        assert_eq!(back[1].mode, 0o020600);
        assert_eq!((back[1].rdevmajor, back[1].rdevminor), (5, 1));
        assert_eq!(back[2].mode, 0o100755);
        assert_eq!(back[8].mode, 0o120777);
    }

    #[test]
    fn exact_bytes_of_one_member_and_trailer() {
        let mut buf = Vec::new();
        write_newc(&[Entry::file("init", 0o755, b"hello".to_vec())], &mut buf).unwrap();
        let mut expected = Vec::new();
        expected.extend_from_slice(b"070701");
        for f in [1u32, 0o100755, 0, 0, 1, 0, 5, 0, 0, 0, 0, 5, 0] {
            expected.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        // 110 + 5 ("init\0") = 115 -> 1 byte of padding.
        expected.extend_from_slice(b"init\0\0");
        // 5 bytes of data -> 3 bytes of padding.
        expected.extend_from_slice(b"hello\0\0\0");
        expected.extend_from_slice(b"070701");
        for f in [0u32, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0] {
            expected.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        // 110 + 11 = 121 -> 3 bytes of padding.
        expected.extend_from_slice(b"TRAILER!!!\0\0\0\0");
        assert_eq!(buf, expected);
    }

    #[test]
    fn headers_and_data_are_aligned_for_every_name_and_size() {
        let mut entries = Vec::new();
        for name_len in 1..=8 {
            for size in 0..=8 {
                entries.push(Entry::file(&"n".repeat(name_len), 0o644, vec![0xAA; size]));
            }
        }
        let mut buf = Vec::new();
        write_newc(&entries, &mut buf).unwrap();
        // read_newc checks alignment of every header and that padding is zero.
        let back = read_newc(&buf).unwrap();
        assert_eq!(back.len(), entries.len());
        for (b, e) in back.iter().zip(&entries) {
            assert_eq!(Some(e.clone()), b.to_entry());
        }
    }

    #[test]
    fn output_is_deterministic() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_newc(&sample(), &mut a).unwrap();
        write_newc(&sample(), &mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn bad_paths_are_refused() {
        for p in ["", "/", "a/../b", "a\0b"] {
            let err = write_newc(&[Entry::dir(p, 0o755)], Vec::new()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{p:?}");
        }
    }

    #[test]
    fn reader_rejects_corruption() {
        let mut buf = Vec::new();
        write_newc(&sample(), &mut buf).unwrap();
        assert!(read_newc(&buf[..buf.len() - 8]).is_err());
        let mut c = buf.clone();
        c[0] = b'1';
        assert!(read_newc(&c).is_err());
    }
}
