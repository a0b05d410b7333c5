//! Entry names: which names a build context may contain, and their normal form.
//!
//! Shared by [`crate::unpack`] (names read from an uploaded zip, hostile) and
//! [`crate::pack`] (names of files on the client's disk, refused early with the
//! same rules the server applies). Pure functions, no I/O: they run on the
//! caller's thread.

use std::fmt;

/// Longest single path component a Linux file system takes (`NAME_MAX`).
pub const MAX_COMPONENT_BYTES: usize = 255;

/// Why an entry name is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathProblem {
    /// The name is empty (or only `.` components naming a file).
    Empty,
    /// The name starts with `/`.
    Absolute,
    /// A `..` component.
    ParentComponent,
    /// A Windows drive prefix such as `C:`.
    DrivePrefix,
    /// A `\` anywhere in the name (a path separator on Windows).
    Backslash,
    /// A NUL or other control character.
    ControlCharacter,
    /// Two `/` in a row, or a `/` name.
    EmptyComponent,
    /// The name is not valid UTF-8 (or not decodable as the archive says).
    NotUtf8,
    /// The whole name is longer than the limit.
    TooLong { len_bytes: usize, max_bytes: usize },
    /// One component is longer than [`MAX_COMPONENT_BYTES`].
    ComponentTooLong { len_bytes: usize },
    /// More nested directories than the limit.
    TooDeep { depth: usize, max_depth: usize },
}

impl fmt::Display for PathProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathProblem::Empty => write!(f, "the name is empty"),
            PathProblem::Absolute => write!(f, "it is an absolute path"),
            PathProblem::ParentComponent => write!(f, "it has a `..` component"),
            PathProblem::DrivePrefix => write!(f, "it starts with a drive prefix"),
            PathProblem::Backslash => write!(f, "it contains a backslash"),
            PathProblem::ControlCharacter => {
                write!(f, "it contains a NUL or other control character")
            }
            PathProblem::EmptyComponent => write!(f, "it has an empty component (`//`)"),
            PathProblem::NotUtf8 => write!(f, "the name is not valid UTF-8"),
            PathProblem::TooLong {
                len_bytes,
                max_bytes,
            } => write!(
                f,
                "the name is {len_bytes} bytes long, more than the limit of {max_bytes}"
            ),
            PathProblem::ComponentTooLong { len_bytes } => write!(
                f,
                "a component is {len_bytes} bytes long, more than {MAX_COMPONENT_BYTES}"
            ),
            PathProblem::TooDeep { depth, max_depth } => write!(
                f,
                "it is nested {depth} levels deep, more than the limit of {max_depth}"
            ),
        }
    }
}

/// A checked name: relative, `/`-separated, no `.`/`..`/empty components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanName {
    /// The normal form (`./a/b/` becomes `a/b`); empty for the root itself.
    pub path: String,
    /// The name ended in `/` (the zip convention for a directory).
    pub trailing_slash: bool,
}

/// Limits a name is checked against.
#[derive(Debug, Clone, Copy)]
pub struct NameLimits {
    pub max_path_bytes: usize,
    pub max_depth: usize,
}

/// Check `name` and return its normal form.
///
/// `.` components are dropped (some zip tools write `./a`); everything
/// else that could point anywhere but a plain path below the destination
/// is refused.
pub fn clean_name(name: &str, limits: NameLimits) -> Result<CleanName, PathProblem> {
    if name.is_empty() {
        return Err(PathProblem::Empty);
    }
    if name.len() > limits.max_path_bytes {
        return Err(PathProblem::TooLong {
            len_bytes: name.len(),
            max_bytes: limits.max_path_bytes,
        });
    }
    if name.chars().any(char::is_control) {
        return Err(PathProblem::ControlCharacter);
    }
    if name.contains('\\') {
        return Err(PathProblem::Backslash);
    }
    if name.starts_with('/') {
        return Err(PathProblem::Absolute);
    }
    let bytes = name.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return Err(PathProblem::DrivePrefix);
    }
    let trailing_slash = name.ends_with('/');
    let body = name.strip_suffix('/').unwrap_or(name);
    let mut parts: Vec<&str> = Vec::new();
    for component in body.split('/') {
        match component {
            "" => return Err(PathProblem::EmptyComponent),
            "." => {}
            ".." => return Err(PathProblem::ParentComponent),
            c if c.len() > MAX_COMPONENT_BYTES => {
                return Err(PathProblem::ComponentTooLong { len_bytes: c.len() })
            }
            c => parts.push(c),
        }
    }
    if parts.len() > limits.max_depth {
        return Err(PathProblem::TooDeep {
            depth: parts.len(),
            max_depth: limits.max_depth,
        });
    }
    Ok(CleanName {
        path: parts.join("/"),
        trailing_slash,
    })
}

/// An entry name as shown in an error message: quoted, escaped, shortened.
///
/// The name comes from the caller's own archive, so it is safe to show to
/// them, but it may hold control characters or be kilobytes long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownName(String);

impl ShownName {
    const MAX_CHARS: usize = 200;

    pub fn new(name: &str) -> ShownName {
        let mut shown: String = name.chars().take(Self::MAX_CHARS).collect();
        if shown.len() < name.len() {
            shown.push_str("...");
        }
        ShownName(format!("{shown:?}"))
    }

    /// The quoted, escaped form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ShownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The mode a regular file gets: the zip's permission bits masked to
/// `0o755` (no setuid/setgid/sticky, no group or world write), and always
/// readable and writable by the owner.
pub fn file_mode(mode: u32) -> u32 {
    (mode & 0o755) | 0o600
}

/// The mode a directory gets: masked like [`file_mode`], always usable by
/// the owner.
pub fn dir_mode(mode: u32) -> u32 {
    (mode & 0o755) | 0o700
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: NameLimits = NameLimits {
        max_path_bytes: 4096,
        max_depth: 64,
    };

    fn clean(name: &str) -> Result<CleanName, PathProblem> {
        clean_name(name, LIMITS)
    }

    #[test]
    fn plain_names_are_normalised() {
        assert_eq!(
            clean("a/b.txt").unwrap(),
            CleanName {
                path: "a/b.txt".into(),
                trailing_slash: false
            }
        );
        assert_eq!(
            clean("./app/").unwrap(),
            CleanName {
                path: "app".into(),
                trailing_slash: true
            }
        );
        assert_eq!(clean("./").unwrap().path, "");
        assert_eq!(clean("a/./b").unwrap().path, "a/b");
        assert_eq!(clean("résumé/ünï.txt").unwrap().path, "résumé/ünï.txt");
        assert_eq!(
            clean("ab:c").unwrap().path,
            "ab:c",
            "a colon later on is fine"
        );
    }

    #[test]
    fn names_that_leave_the_destination_are_refused() {
        assert_eq!(clean("/etc/passwd"), Err(PathProblem::Absolute));
        assert_eq!(clean("../x"), Err(PathProblem::ParentComponent));
        assert_eq!(clean("a/../../x"), Err(PathProblem::ParentComponent));
        assert_eq!(clean("a/.."), Err(PathProblem::ParentComponent));
        assert_eq!(clean("C:/windows"), Err(PathProblem::DrivePrefix));
        assert_eq!(clean("c:x"), Err(PathProblem::DrivePrefix));
        assert_eq!(clean("..\\x"), Err(PathProblem::Backslash));
        assert_eq!(clean("a\\b"), Err(PathProblem::Backslash));
        assert_eq!(clean("//server/x"), Err(PathProblem::Absolute));
    }

    #[test]
    fn odd_characters_and_shapes_are_refused() {
        assert_eq!(clean(""), Err(PathProblem::Empty));
        assert_eq!(clean("a\0b"), Err(PathProblem::ControlCharacter));
        assert_eq!(clean("a\nb"), Err(PathProblem::ControlCharacter));
        assert_eq!(clean("a\u{7f}"), Err(PathProblem::ControlCharacter));
        assert_eq!(clean("a\u{85}"), Err(PathProblem::ControlCharacter));
        assert_eq!(clean("a//b"), Err(PathProblem::EmptyComponent));
        assert_eq!(clean("a//"), Err(PathProblem::EmptyComponent));
    }

    #[test]
    fn length_and_depth_limits_apply() {
        let long = "a".repeat(4097);
        assert_eq!(
            clean(&long),
            Err(PathProblem::TooLong {
                len_bytes: 4097,
                max_bytes: 4096
            })
        );
        let component = "b".repeat(256);
        assert_eq!(
            clean(&component),
            Err(PathProblem::ComponentTooLong { len_bytes: 256 })
        );
        let deep = vec!["d"; 65].join("/");
        assert_eq!(
            clean(&deep),
            Err(PathProblem::TooDeep {
                depth: 65,
                max_depth: 64
            })
        );
        let ok = vec!["d"; 64].join("/");
        assert!(clean(&ok).is_ok());
    }

    #[test]
    fn shown_names_are_escaped_and_shortened() {
        assert_eq!(ShownName::new("a\nb").as_str(), "\"a\\nb\"");
        let long = "x".repeat(1000);
        assert!(ShownName::new(&long).as_str().len() < 210);
    }

    #[test]
    fn modes_keep_exec_bits_and_drop_the_dangerous_ones() {
        assert_eq!(file_mode(0o100755), 0o755);
        assert_eq!(file_mode(0o644), 0o644);
        assert_eq!(file_mode(0o4777), 0o755);
        assert_eq!(file_mode(0o666), 0o644);
        assert_eq!(file_mode(0o400), 0o600);
        assert_eq!(file_mode(0o700), 0o700);
        assert_eq!(dir_mode(0o1777), 0o755);
        assert_eq!(dir_mode(0o555), 0o755);
        assert_eq!(dir_mode(0o040700), 0o700);
    }
}
