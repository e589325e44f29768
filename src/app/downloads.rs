//! Files on disk for transfers: the offerer's [`DiskSource`], the receiver's [`DiskSink`]
//! (a temporary file in the downloads directory, renamed only once the SHA-256 matched,
//! never over an existing file), which writes under the name that
//! [`crate::text::safe_file_name`] made safe.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::peer::{FileSink, FileSource};
use crate::text::{numbered, safe_file_name};

/// Suffix of the temporary file a download is written to.
pub const PART_SUFFIX: &str = ".p2pchat-part";

/// The bytes that an unprivileged process may still write in the file system of `dir`
/// (`statvfs`: available blocks times the fragment size).
// The counts are 64-bit here but 32-bit on some targets: the conversions are not useless.
#[allow(clippy::useless_conversion)]
pub fn free_space(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    // SAFETY: statvfs reads the NUL-terminated path and writes only into the zeroed struct
    // we pass, a plain C struct.
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c_path.as_ptr(), &mut st) != 0 {
            return Err(io::Error::last_os_error());
        }
        st
    };
    Ok(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
}

/// The downloads directory to use: `wanted`, else the platform's, else the current one.
/// The second value says which, for a line to the user.
pub fn downloads_dir(wanted: Option<PathBuf>) -> (PathBuf, String) {
    if let Some(dir) = wanted {
        return (dir, "given by --downloads".into());
    }
    let home_downloads = dirs::home_dir()
        .map(|h| h.join("Downloads"))
        .filter(|d| d.is_dir());
    // A default that does not exist is passed over (only --downloads must exist).
    match dirs::download_dir()
        .filter(|d| d.is_dir())
        .or(home_downloads)
    {
        Some(dir) => (dir, "the platform's downloads directory".into()),
        None => (
            PathBuf::from("."),
            "no downloads directory known for this platform; using the current directory \
             (choose one with --downloads)"
                .into(),
        ),
    }
}

/// The size and SHA-256 of a file, read once from start to end.
pub fn hash_file(path: &Path) -> io::Result<(u64, [u8; 32])> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                hasher.update(&buf[..k]);
                size += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((size, hasher.finalize().into()))
}

/// Read-ahead of [`DiskSource`]: one read of this size serves many chunks.
const READ_AHEAD: usize = 256 * 1024;

/// A file being sent, read in blocks of 256 KiB.
pub struct DiskSource {
    file: File,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    at: u64,
}

impl DiskSource {
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(DiskSource {
            file: File::open(path)?,
            buf: Vec::new(),
            at: 0,
        })
    }
}

impl FileSource for DiskSource {
    fn read_at(&mut self, offset: u64, out: &mut [u8]) -> io::Result<usize> {
        let end = self.at + self.buf.len() as u64;
        if offset < self.at || offset >= end {
            self.buf.resize(READ_AHEAD, 0);
            let k = self.file.read_at(&mut self.buf, offset)?;
            self.buf.truncate(k);
            self.at = offset;
            if k == 0 {
                return Ok(0);
            }
        }
        let start = (offset - self.at) as usize;
        let k = out.len().min(self.buf.len() - start);
        out[..k].copy_from_slice(&self.buf[start..start + k]);
        Ok(k)
    }
}

/// A download: written to `.<name>.p2pchat-part` in the directory (created new, never
/// over another file), moved to `name` (or `name (1).ext`, ...: never over an existing
/// file) by [`FileSink::finish`], removed by [`FileSink::abort`].
pub struct DiskSink {
    dir: PathBuf,
    name: String,
    temp: PathBuf,
    out: Option<BufWriter<File>>,
}

impl DiskSink {
    /// Creates the temporary file for `name`, which must be safe (see [`safe_file_name`]).
    pub fn create(dir: &Path, name: &str) -> io::Result<Self> {
        debug_assert_eq!(safe_file_name(name).as_deref(), Ok(name));
        for k in 0..1000 {
            let temp = dir.join(format!(".{}{PART_SUFFIX}", numbered(name, k)));
            match OpenOptions::new().write(true).create_new(true).open(&temp) {
                Ok(file) => {
                    return Ok(DiskSink {
                        dir: dir.to_path_buf(),
                        name: name.to_string(),
                        temp,
                        out: Some(BufWriter::with_capacity(READ_AHEAD, file)),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot create a file in {}: {e}", dir.display()),
                    ))
                }
            }
        }
        Err(io::Error::other("too many downloads of that name at once"))
    }

    /// The temporary file being written.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }
}

impl FileSink for DiskSink {
    fn write_chunk(&mut self, data: &[u8]) -> io::Result<()> {
        match self.out.as_mut() {
            Some(out) => out.write_all(data),
            None => Err(io::Error::other("the download is closed")),
        }
    }

    fn finish(mut self: Box<Self>) -> io::Result<PathBuf> {
        if let Some(out) = self.out.take() {
            out.into_inner().map_err(|e| e.into_error())?;
        }
        let result = (|| {
            for k in 0..10_000 {
                let target = self.dir.join(numbered(&self.name, k));
                // A hard link fails if the target exists: a rename that never replaces.
                match fs::hard_link(&self.temp, &target) {
                    Ok(()) => {
                        fs::remove_file(&self.temp)?;
                        return Ok(target);
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                    Err(_) => {
                        // No hard links here (some file systems): claim the name, then
                        // rename over the empty file we just created.
                        match OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(&target)
                        {
                            Ok(_) => {
                                fs::rename(&self.temp, &target)?;
                                return Ok(target);
                            }
                            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
            Err(io::Error::other("too many files of that name"))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&self.temp);
        }
        result
    }

    fn abort(mut self: Box<Self>) {
        self.out = None;
        let _ = fs::remove_file(&self.temp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::useless_conversion)]
    fn free_space_is_what_the_file_system_says_and_errors_are_errors() {
        let dir = std::env::temp_dir();
        let free = free_space(&dir).unwrap();
        // What df would say: within what other processes write meanwhile.
        let st = {
            let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
            st
        };
        let again = u64::from(st.f_bavail) * u64::from(st.f_frsize);
        assert!(free.abs_diff(again) < 64 << 20, "{free} vs {again}");
        assert!(free > 0);
        assert!(free_space(Path::new("/nonexistent/p2pchat-test")).is_err());
    }
}
