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
/// one to `0700` — only if it holds nothing but what `ours` names: a wide
/// directory with other files in it (`--data-dir .`, `/tmp`, a home) is
/// somebody's, not the store's, and is refused rather than narrowed under
/// its owner's feet.
///
/// # Errors
///
/// The directory cannot be created, has wider modes and holds files not
/// the store's, or cannot be tightened (another user owns it).
pub(crate) fn private_dir(dir: &Path, ours: impl Fn(&str) -> bool) -> io::Result<()> {
    if let Some(foreign) = foreign_entry(dir, &ours)? {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "open to other users and holding files not the store's ({foreign}): give the \
                 store a directory of its own, or make this one mode 700 yourself"
            ),
        ));
    }
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

/// The first entry of an existing, too-open `dir` that `ours` does not name.
#[cfg(unix)]
fn foreign_entry(dir: &Path, ours: &impl Fn(&str) -> bool) -> io::Result<Option<String>> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = match fs::metadata(dir) {
        Ok(meta) => meta.permissions().mode() & 0o777,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if mode & !DIR_MODE == 0 {
        return Ok(None);
    }
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !ours(&name) {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

#[cfg(not(unix))]
fn foreign_entry(_dir: &Path, _ours: &impl Fn(&str) -> bool) -> io::Result<Option<String>> {
    Ok(None)
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

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path)
            .expect("the path exists")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn a_wide_directory_is_tightened_only_if_it_holds_nothing_but_the_stores() {
        let root = tempfile::tempdir().unwrap();
        let ours = |name: &str| name.starts_with("inbox.sqlite3");
        let store = root.path().join("store");
        fs::create_dir(&store).unwrap();
        fs::write(store.join("inbox.sqlite3"), b"").unwrap();
        fs::set_permissions(&store, fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&store, ours).unwrap();
        assert_eq!(mode(&store), 0o700);

        let shared = root.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::write(shared.join("notes.txt"), b"mine").unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
        let e = private_dir(&shared, ours).unwrap_err();
        assert!(e.to_string().contains("notes.txt"), "{e}");
        assert_eq!(mode(&shared), 0o755, "left as its owner set it");
        // Already private: used as it is, whatever else it holds.
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o700)).unwrap();
        private_dir(&shared, ours).unwrap();
    }
}
