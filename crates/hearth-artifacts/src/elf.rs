//! The little ELF64 reading setup needs, on untrusted bytes with every offset
//! bounds-checked: whether an executable is statically linked (no `PT_INTERP`
//! program header, so it can run as `/init` with no loader in the initramfs),
//! and the contents of a named section (a kernel module's `.modinfo`).

const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;
const PT_INTERP: u32 = 3;
const EHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;
const SHDR_LEN: usize = 64;

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
    #[error("dynamically linked (program interpreter {interpreter})")]
    Dynamic { interpreter: String },
    #[error("malformed ELF: {0}")]
    Malformed(&'static str),
}

/// A parsed ELF64 little-endian header over borrowed bytes.
#[derive(Debug, Clone, Copy)]
pub struct Elf64<'a> {
    bytes: &'a [u8],
    /// `e_type` (2 = executable, 3 = shared object / PIE, 1 = relocatable).
    pub e_type: u16,
    /// `e_machine` (62 = x86-64).
    pub machine: u16,
    phoff: u64,
    phentsize: u16,
    phnum: u16,
    shoff: u64,
    shentsize: u16,
    shnum: u16,
    shstrndx: u16,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// `bytes[offset..offset + len]`, if it lies within `bytes`.
fn slice(bytes: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    bytes.get(start..end)
}

/// A program header: `(p_type, p_offset, p_filesz)`.
pub type ProgramHeader = (u32, u64, u64);

impl<'a> Elf64<'a> {
    /// Parses the ELF header.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ElfError> {
        if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
            return Err(ElfError::NotElf);
        }
        if bytes.len() < EHDR_LEN {
            return Err(ElfError::Malformed("truncated header"));
        }
        if bytes[EI_CLASS] != ELFCLASS64 || bytes[EI_DATA] != ELFDATA2LSB {
            return Err(ElfError::NotElf64Le);
        }
        let h = |off| u16_at(bytes, off).ok_or(ElfError::Malformed("truncated header"));
        let w = |off| u64_at(bytes, off).ok_or(ElfError::Malformed("truncated header"));
        Ok(Elf64 {
            bytes,
            e_type: h(16)?,
            machine: h(18)?,
            phoff: w(32)?,
            shoff: w(40)?,
            phentsize: h(54)?,
            phnum: h(56)?,
            shentsize: h(58)?,
            shnum: h(60)?,
            shstrndx: h(62)?,
        })
    }

    /// The program headers.
    pub fn program_headers(&self) -> Result<Vec<ProgramHeader>, ElfError> {
        if self.phnum == 0 {
            return Ok(Vec::new());
        }
        if usize::from(self.phentsize) < PHDR_LEN {
            return Err(ElfError::Malformed("program header entry too small"));
        }
        (0..u64::from(self.phnum))
            .map(|i| {
                let off = self.phoff + i * u64::from(self.phentsize);
                let ph = slice(self.bytes, off, PHDR_LEN as u64)
                    .ok_or(ElfError::Malformed("program header out of bounds"))?;
                // Offsets within a 56-byte slice: these cannot fail.
                Ok((
                    u32_at(ph, 0).unwrap_or_default(),
                    u64_at(ph, 8).unwrap_or_default(),
                    u64_at(ph, 32).unwrap_or_default(),
                ))
            })
            .collect()
    }

    /// The contents of the first section called `name`, if any.
    pub fn section(&self, name: &str) -> Result<Option<&'a [u8]>, ElfError> {
        if self.shnum == 0 {
            return Ok(None);
        }
        if usize::from(self.shentsize) < SHDR_LEN {
            return Err(ElfError::Malformed("section header entry too small"));
        }
        let shdr = |i: u16| -> Result<&'a [u8], ElfError> {
            let off = self.shoff + u64::from(i) * u64::from(self.shentsize);
            slice(self.bytes, off, SHDR_LEN as u64)
                .ok_or(ElfError::Malformed("section header out of bounds"))
        };
        let contents = |sh: &[u8]| -> Result<&'a [u8], ElfError> {
            let offset = u64_at(sh, 24).unwrap_or_default();
            let size = u64_at(sh, 32).unwrap_or_default();
            slice(self.bytes, offset, size).ok_or(ElfError::Malformed("section out of bounds"))
        };
        if self.shstrndx >= self.shnum {
            return Err(ElfError::Malformed("bad section name table index"));
        }
        let names = contents(shdr(self.shstrndx)?)?;
        for i in 0..self.shnum {
            let sh = shdr(i)?;
            let name_off = usize::try_from(u32_at(sh, 0).unwrap_or_default()).unwrap_or(usize::MAX);
            let Some(rest) = names.get(name_off..) else {
                continue;
            };
            let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
            if &rest[..end] == name.as_bytes() {
                return contents(sh).map(Some);
            }
        }
        Ok(None)
    }
}

/// Checks that `bytes` are an x86-64 ELF executable that needs no program
/// interpreter (statically linked, possibly static-pie).
pub fn check_static_executable(bytes: &[u8]) -> Result<(), ElfError> {
    let elf = Elf64::parse(bytes)?;
    if elf.machine != EM_X86_64 {
        return Err(ElfError::WrongMachine(elf.machine));
    }
    if elf.e_type != ET_EXEC && elf.e_type != ET_DYN {
        return Err(ElfError::NotExecutable(elf.e_type));
    }
    let headers = elf.program_headers()?;
    if headers.is_empty() {
        return Err(ElfError::Malformed("no program headers"));
    }
    if let Some(&(_, offset, size)) = headers.iter().find(|(t, _, _)| *t == PT_INTERP) {
        let raw = slice(bytes, offset, size).unwrap_or_default();
        let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
        return Err(ElfError::Dynamic {
            interpreter: String::from_utf8_lossy(&raw[..end]).into_owned(),
        });
    }
    Ok(())
}

/// Synthetic ELF files for tests in this crate.
#[cfg(test)]
pub(crate) mod testing {
    /// An ELF64 x86-64 executable whose program headers have these types.
    /// A `PT_INTERP` header points at "/lib/ld.so".
    pub(crate) fn executable(e_type: u16, phdr_types: &[u32]) -> Vec<u8> {
        let phoff = 64usize;
        let interp_off = phoff + 56 * phdr_types.len();
        let interp = b"/lib/ld.so\0";
        let mut b = vec![0u8; interp_off + interp.len()];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&e_type.to_le_bytes());
        b[18..20].copy_from_slice(&62u16.to_le_bytes());
        b[32..40].copy_from_slice(&(phoff as u64).to_le_bytes());
        b[52..54].copy_from_slice(&64u16.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&(phdr_types.len() as u16).to_le_bytes());
        for (i, t) in phdr_types.iter().enumerate() {
            let p = phoff + 56 * i;
            b[p..p + 4].copy_from_slice(&t.to_le_bytes());
            if *t == 3 {
                b[p + 8..p + 16].copy_from_slice(&(interp_off as u64).to_le_bytes());
                b[p + 32..p + 40].copy_from_slice(&(interp.len() as u64).to_le_bytes());
            }
        }
        b[interp_off..].copy_from_slice(interp);
        b
    }

    /// An ELF64 relocatable object (like a `.ko`) with the given sections.
    pub(crate) fn object(sections: &[(&str, &[u8])]) -> Vec<u8> {
        // Layout: header, section contents, name table, section headers.
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&1u16.to_le_bytes());
        b[18..20].copy_from_slice(&62u16.to_le_bytes());
        b[52..54].copy_from_slice(&64u16.to_le_bytes());
        let mut placed = Vec::new();
        let mut names = vec![0u8];
        for (name, data) in sections {
            placed.push((names.len(), b.len(), data.len()));
            names.extend_from_slice(name.as_bytes());
            names.push(0);
            b.extend_from_slice(b"junk-before-");
            b.extend_from_slice(data);
        }
        let shstr_name = names.len();
        names.extend_from_slice(b".shstrtab\0");
        let names_off = b.len();
        b.extend_from_slice(&names);
        let shoff = b.len();
        let mut shdr = |name: usize, off: usize, size: usize| {
            let mut h = [0u8; 64];
            h[0..4].copy_from_slice(&(name as u32).to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            b.extend_from_slice(&h);
        };
        shdr(0, 0, 0);
        // Offsets recorded before `junk-before-` was appended: skip it.
        for (name, off, size) in &placed {
            shdr(*name, off + 12, *size);
        }
        shdr(shstr_name, names_off, names.len());
        let shnum = placed.len() as u16 + 2;
        b[40..48].copy_from_slice(&(shoff as u64).to_le_bytes());
        b[58..60].copy_from_slice(&64u16.to_le_bytes());
        b[60..62].copy_from_slice(&shnum.to_le_bytes());
        b[62..64].copy_from_slice(&(shnum - 1).to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{executable, object};
    use super::*;

    const PT_LOAD: u32 = 1;
    const PT_DYNAMIC: u32 = 2;

    #[test]
    fn static_executables_pass() {
        check_static_executable(&executable(ET_EXEC, &[PT_LOAD, PT_LOAD])).unwrap();
        // static-pie: ET_DYN with PT_DYNAMIC but no interpreter.
        check_static_executable(&executable(ET_DYN, &[PT_LOAD, PT_DYNAMIC])).unwrap();
    }

    #[test]
    fn interpreter_means_dynamic() {
        let err =
            check_static_executable(&executable(ET_DYN, &[6, PT_INTERP, PT_LOAD])).unwrap_err();
        assert_eq!(
            err,
            ElfError::Dynamic {
                interpreter: "/lib/ld.so".into()
            }
        );
    }

    #[test]
    fn non_elf_and_bad_elf_are_refused() {
        assert_eq!(
            check_static_executable(b"#!/bin/sh\n"),
            Err(ElfError::NotElf)
        );
        assert_eq!(check_static_executable(b""), Err(ElfError::NotElf));
        assert!(matches!(
            check_static_executable(b"\x7fELF\x02\x01"),
            Err(ElfError::Malformed(_))
        ));
        let mut b = executable(ET_EXEC, &[PT_LOAD]);
        b[4] = 1; // 32-bit
        assert_eq!(check_static_executable(&b), Err(ElfError::NotElf64Le));
        let mut b = executable(ET_EXEC, &[PT_LOAD]);
        b[18] = 183; // aarch64
        assert_eq!(
            check_static_executable(&b),
            Err(ElfError::WrongMachine(183))
        );
        assert_eq!(
            check_static_executable(&executable(1, &[PT_LOAD])),
            Err(ElfError::NotExecutable(1))
        );
        let mut b = executable(ET_EXEC, &[PT_LOAD]);
        b[56..58].copy_from_slice(&1000u16.to_le_bytes()); // headers past the end
        assert!(matches!(
            check_static_executable(&b),
            Err(ElfError::Malformed(_))
        ));
    }

    #[test]
    fn host_binaries() {
        // busybox-static's busybox is static; ls is dynamic.
        if let Ok(b) = std::fs::read("/bin/busybox") {
            check_static_executable(&b).unwrap();
        }
        let ls = std::fs::read("/bin/ls").unwrap();
        assert!(matches!(
            check_static_executable(&ls),
            Err(ElfError::Dynamic { .. })
        ));
    }

    #[test]
    fn sections_are_found_by_name() {
        let o = object(&[(".text", b"\x90\x90"), (".modinfo", b"name=x\0depends=\0")]);
        let elf = Elf64::parse(&o).unwrap();
        assert_eq!(
            elf.section(".modinfo").unwrap(),
            Some(&b"name=x\0depends=\0"[..])
        );
        assert_eq!(elf.section(".text").unwrap(), Some(&b"\x90\x90"[..]));
        assert_eq!(elf.section(".data").unwrap(), None);
    }
}
