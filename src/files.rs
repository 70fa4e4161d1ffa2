//! Reading files a user points the CLI or the library at (keys, JWKS,
//! captured bodies) with a bound, so a wrong path (a device, a huge log)
//! fails clearly instead of filling memory.

use std::io::{self, Read};
use std::path::Path;

/// The largest key, JWKS or captured body read (16 MiB): far beyond any
/// real one (a notification body is at most a few MiB).
pub const MAX_FILE: u64 = 16 * 1024 * 1024;

/// Reads at most [`MAX_FILE`] bytes from `path`.
///
/// # Errors
///
/// The file's I/O errors, and [`io::ErrorKind::FileTooLarge`] past the bound.
pub fn read_capped(path: &Path) -> io::Result<Vec<u8>> {
    read_all_capped(std::fs::File::open(path)?)
}

/// Reads `reader` to its end, at most [`MAX_FILE`] bytes.
///
/// # Errors
///
/// The reader's errors, and [`io::ErrorKind::FileTooLarge`] past the bound.
pub fn read_all_capped(reader: impl Read) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.take(MAX_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!(
                "larger than {} MiB, the most read",
                MAX_FILE / (1024 * 1024)
            ),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_past_the_bound_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("at");
        std::fs::write(&at, vec![b'x'; MAX_FILE as usize]).unwrap();
        assert_eq!(read_capped(&at).unwrap().len() as u64, MAX_FILE);
        let over = dir.path().join("over");
        std::fs::write(&over, vec![b'x'; MAX_FILE as usize + 1]).unwrap();
        let e = read_capped(&over).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert!(e.to_string().contains("16 MiB"), "{e}");
    }
}
