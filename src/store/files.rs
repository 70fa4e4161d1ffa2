//! The files of a data directory are its owner's only: the store holds every
//! subscription's `clientState` in clear and the items with their tokens, so
//! a local user who could read it could forge notifications.
//!
//! Directories are made (or tightened to) `0700` and files `0600` whatever
//! the umask. A directory or file with wider modes that this user cannot
//! change (someone else owns it) is refused rather than used.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

/// Mode of the directories the store creates or uses.
#[cfg(unix)]
const DIR_MODE: u32 = 0o700;
/// Mode of the files the store creates or uses.
#[cfg(unix)]
const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents, `0700` too) or tightens an existing
/// one to `0700`.
///
/// # Errors
///
/// The directory cannot be created, or has wider modes and cannot be
/// tightened (another user owns it).
pub(crate) fn private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(DIR_MODE);
    }
    builder.create(dir)?;
    // An existing directory keeps its modes, and mkdir applies the umask
    // only to narrow them: tighten in every case.
    tighten(dir, true)
}

/// Opens `path` for writing, creating it `0600` if needed, and tightens an
/// existing file to `0600`.
///
/// # Errors
///
/// The file cannot be opened, or has wider modes and cannot be tightened.
pub(crate) fn private_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(FILE_MODE);
    }
    let file = options.open(path)?;
    tighten(path, false)?;
    Ok(file)
}

/// Tightens `path` if it exists (SQLite's `-wal` and `-shm` files, made by a
/// version that did not create the database `0600` first); nothing if not.
///
/// # Errors
///
/// The file has wider modes and cannot be tightened.
pub(crate) fn tighten_if_present(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(_) => tighten(path, false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn tighten(path: &Path, dir: bool) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let wanted = if dir { DIR_MODE } else { FILE_MODE };
    let mode = fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & !wanted == 0 {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode & wanted)).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "open to other users (mode {mode:o}) and cannot be made private ({e}): it \
                 must belong to the user running the store, with mode {wanted:o}"
            ),
        )
    })
}

#[cfg(not(unix))]
fn tighten(_path: &Path, _dir: bool) -> io::Result<()> {
    Ok(())
}
