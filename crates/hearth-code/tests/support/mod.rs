//! Building zips for the tests: honest ones with the zip crate's writer, and
//! hostile ones by patching the bytes the writer produced (for what the
//! writer will not write: duplicate names, lying sizes, encryption flags,
//! other compression methods, overlapping entries).

#![allow(dead_code)]

use std::io::{Cursor, Write};
use std::path::Path;

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

pub const LOCAL_SIG: &[u8; 4] = b"PK\x03\x04";
pub const CENTRAL_SIG: &[u8; 4] = b"PK\x01\x02";

/// One entry to write.
pub enum Item<'a> {
    File(&'a str, &'a [u8]),
    /// A file with explicit permission bits (`unix_permissions`, 0o777 max).
    FileMode(&'a str, &'a [u8], u32),
    /// A file with raw external attributes (`mode << 16`).
    FileAttrs(&'a str, &'a [u8], u32),
    Stored(&'a str, &'a [u8]),
    Dir(&'a str),
    DirMode(&'a str, u32),
    Symlink(&'a str, &'a str),
}

pub fn zip_bytes(items: &[Item<'_>]) -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    let deflated = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    for item in items {
        match item {
            Item::File(name, data) => {
                w.start_file(*name, deflated).unwrap();
                w.write_all(data).unwrap();
            }
            Item::FileMode(name, data, mode) => {
                w.start_file(*name, deflated.unix_permissions(*mode))
                    .unwrap();
                w.write_all(data).unwrap();
            }
            Item::FileAttrs(name, data, attrs) => {
                w.start_file(*name, deflated.external_attributes(*attrs))
                    .unwrap();
                w.write_all(data).unwrap();
            }
            Item::Stored(name, data) => {
                w.start_file(
                    *name,
                    SimpleFileOptions::default().compression_method(CompressionMethod::Stored),
                )
                .unwrap();
                w.write_all(data).unwrap();
            }
            Item::Dir(name) => w.add_directory(*name, deflated).unwrap(),
            Item::DirMode(name, mode) => w
                .add_directory(*name, deflated.unix_permissions(*mode))
                .unwrap(),
            Item::Symlink(name, target) => w.add_symlink(*name, *target, deflated).unwrap(),
        }
    }
    w.finish().unwrap().into_inner()
}

pub fn write_zip(path: &Path, items: &[Item<'_>]) {
    std::fs::write(path, zip_bytes(items)).unwrap();
}

/// Offsets of every local and central header (by signature: keep entry data
/// free of the signatures).
pub fn headers(bytes: &[u8]) -> (Vec<usize>, Vec<usize>) {
    let find = |sig: &[u8; 4]| -> Vec<usize> {
        bytes
            .windows(4)
            .enumerate()
            .filter(|(_, w)| w == sig)
            .map(|(i, _)| i)
            .collect()
    };
    (find(LOCAL_SIG), find(CENTRAL_SIG))
}

/// Replace every occurrence of `from` with `to` (same length): renames an
/// entry in both its local and central header.
pub fn replace_all(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let mut found = false;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + to.len()].copy_from_slice(to);
            found = true;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(found, "{:?} not found", String::from_utf8_lossy(from));
}

fn put_u16(bytes: &mut [u8], at: usize, v: u16) {
    bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Set general-purpose flag bits of entry `index` (local and central).
pub fn set_flags(bytes: &mut [u8], index: usize, bits: u16) {
    let (local, central) = headers(bytes);
    let l = local[index] + 6;
    let c = central[index] + 8;
    let lv = u16::from_le_bytes([bytes[l], bytes[l + 1]]) | bits;
    let cv = u16::from_le_bytes([bytes[c], bytes[c + 1]]) | bits;
    put_u16(bytes, l, lv);
    put_u16(bytes, c, cv);
}

/// Set the compression method of entry `index` (local and central).
pub fn set_method(bytes: &mut [u8], index: usize, method: u16) {
    let (local, central) = headers(bytes);
    put_u16(bytes, local[index] + 8, method);
    put_u16(bytes, central[index] + 10, method);
}

/// Set the declared uncompressed size of entry `index` (local and central).
pub fn set_uncompressed_size(bytes: &mut [u8], index: usize, size: u32) {
    let (local, central) = headers(bytes);
    put_u32(bytes, local[index] + 22, size);
    put_u32(bytes, central[index] + 24, size);
}

/// Set the external attributes of entry `index` (central only: that is
/// where they live).
pub fn set_external_attributes(bytes: &mut [u8], index: usize, attrs: u32) {
    let (_, central) = headers(bytes);
    put_u32(bytes, central[index] + 38, attrs);
}

/// Point entry `index`'s central header at the local header of entry
/// `target` (two entries sharing one body: the overlapping-entries bomb).
pub fn share_local_header(bytes: &mut [u8], index: usize, target: usize) {
    let (local, central) = headers(bytes);
    put_u32(bytes, central[index] + 42, local[target] as u32);
}

/// A directory that a test will unpack into: its parent exists, it does not.
pub struct Dest {
    pub tmp: tempfile::TempDir,
}

impl Dest {
    pub fn new() -> Dest {
        Dest {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    pub fn zip(&self) -> std::path::PathBuf {
        self.tmp.path().join("in.zip")
    }

    pub fn dir(&self) -> std::path::PathBuf {
        self.tmp.path().join("ctx")
    }

    /// Everything in the temporary directory but the input zip.
    pub fn leftovers(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "in.zip")
            .collect();
        names.sort();
        names
    }
}
