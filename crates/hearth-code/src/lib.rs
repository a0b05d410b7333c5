//! Code artifacts for image builds: where a build's zip comes from, and
//! unpacking it safely into a build context directory on the host.
//!
//! The crate owns three things; none of them keeps a task or thread of its
//! own. [`Fetcher::fetch`] is async and runs on the image build's task;
//! [`unpack_zip`] and [`pack_dir`] are blocking (run the former on
//! `spawn_blocking`); [`CodeSource::parse`] is quick and runs on the API
//! handler's task.
//!
//! # Code URIs
//!
//! A build names its zip with one of three URIs; anything else (`http://`,
//! `ftp://`, a bare path) is refused.
//!
//! * `file:///absolute/path/code.zip`: a zip on the server's own disk. Only
//!   allowed under a directory the server was started with
//!   (`--artifact-root DIR`, any number of times); without one, every
//!   `file://` URI is refused. The path must be absolute, without a host
//!   and without `..`; it is taken literally (no `%` decoding). After
//!   resolving symbolic links it must still be strictly below an artifact
//!   root, and be a regular file. A path outside every root is refused
//!   without being looked at, so the answer never tells whether it exists.
//!   The check is repeated on the opened file when it is fetched.
//! * `s3://bucket/key`: an object in the S3-compatible store the server is
//!   configured with (endpoint, region, static credentials, path-style
//!   addressing); without one, every `s3://` URI is refused. Bucket names
//!   follow S3's rules (3-63 characters of `a-z`, `0-9`, `.`, `-`, starting
//!   and ending with a letter or digit, no `..`, not an IP address); keys
//!   are 1-1024 bytes without control characters, taken literally.
//! * `upload://upl-xxxxxxxxxxxxxxxxxxxx`: an artifact the caller's account
//!   uploaded to this server earlier ([`Uploads`]). Ids are `upl-` and 20
//!   random characters `a-z2-7`; another account's upload is not found.
//!
//! A fetch is streamed to disk and refused once it passes 256 MiB
//! ([`FetchLimits`]); a failed fetch leaves nothing behind.
//!
//! # What a build zip may contain
//!
//! Regular files and directories, stored or deflated, nothing else.
//! [`unpack_zip`] refuses the whole archive, naming the entry, if any entry:
//!
//! * has an absolute name, a `..` component, a drive prefix (`C:`), a
//!   backslash, a NUL or other control character, an empty component
//!   (`a//b`), or a name that is not valid UTF-8 (`./` prefixes are fine);
//! * is a symbolic link, device, FIFO or socket (by its Unix mode bits),
//!   is encrypted, or uses a compression method other than stored/deflate;
//! * appears twice (also after normalising: `a` and `./a`), or is a file
//!   where another entry needs a directory;
//! * has inflated data that does not match its header (size or CRC).
//!
//! and the whole archive if it overlaps entries' data (a zip bomb
//! construction) or passes a limit ([`UnpackLimits`], defaults):
//!
//! | limit | default |
//! | --- | --- |
//! | total inflated bytes | 1 GiB |
//! | entries (directories included) | 20,000 |
//! | bytes in an entry name | 4096 (255 in one component) |
//! | directory depth | 64 |
//! | inflated:compressed ratio, per entry and for the whole archive | 100:1, checked once more than 1 MiB is inflated |
//!
//! Sizes are counted on the bytes actually inflated, never taken from the
//! headers, and inflation stops at the limit. On any refusal the partly
//! unpacked directory is removed.
//!
//! Files are written with their permission bits masked: the executable
//! bits are kept, setuid, setgid, sticky and group/world write are dropped,
//! and the owner can always read and write (`0o777` -> `0o755`, `0o666` ->
//! `0o644`, `0o400` -> `0o600`); directories likewise, always `rwx` for the
//! owner. Ownership in the zip is ignored; timestamps are not restored.
//!
//! [`pack_dir`] is the client side: it zips a directory deterministically,
//! keeping executable bits, refusing symbolic links and names the server
//! would refuse.

#![forbid(unsafe_code)]

mod error;
mod fetch;
mod names;
mod pack;
mod source;
mod unpack;
mod uploads;

pub use error::CodeError;
pub use fetch::{FetchLimits, Fetched, Fetcher};
pub use names::{PathProblem, ShownName};
pub use pack::{pack_dir, PackError, PackSummary};
pub use source::{CodeSource, S3Config, SourceConfig};
pub use unpack::{unpack_zip, ContextEntry, ContextSummary, EntryKind, UnpackError, UnpackLimits};
pub use uploads::{UploadId, Uploads};
