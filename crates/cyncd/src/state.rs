//! Files in the state directory: how they are written and read.
//!
//! Everything cyncd keeps across restarts lives in one directory (`state_dir`): the TLS
//! certificate and key, the device auth pins (`device-auth.json`), the routing and rollback
//! latch (`routing.json`), the MQTT entities and the effects lights run (`effects.json`). Each file is written whole through a
//! temporary file and a rename ([`write_atomic`]), so a crash leaves the old content or all of
//! the new, never half; the directory is created with mode 0700. Reads are bounded
//! ([`read_bounded`]): a state file is never trusted to be small.
//!
//! One daemon per state directory is assumed.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Creates `dir` (and its parents) with mode 0700 when missing.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Writes `bytes` to `path` through `.<name>.tmp` in the same directory and a rename, so `path`
/// holds either the old content or all of the new. The temporary file is created with `mode`
/// (before any byte is written) and exclusively, so it never follows a planted link. The
/// directory is created (0700) when missing.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    create_dir(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        });
    if let Err(e) = written {
        // Best effort: a leftover is removed by the next attempt anyway.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path)?;
    // Make the rename itself durable; some filesystems refuse to sync a directory, which only
    // costs durability, so the result is ignored.
    let _ = File::open(dir).and_then(|d| d.sync_all());
    Ok(())
}

/// Reads a whole file of at most `limit` bytes; `Ok(None)` when it does not exist. A larger
/// file is an error (`InvalidData`), not a truncated read.
pub fn read_bounded(path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_whole_files_with_their_mode_and_reads_them_bounded() {
        let dir = std::env::temp_dir().join(format!(
            "cyncd-state-unit-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let path = dir.join("nested/file.json");
        write_atomic(&path, b"first", 0o600).unwrap();
        write_atomic(&path, b"second", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let parent = fs::metadata(dir.join("nested"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(parent, 0o700);
        assert!(!dir.join("nested/.file.json.tmp").exists());
        assert_eq!(read_bounded(&path, 6).unwrap().unwrap(), b"second");
        assert_eq!(
            read_bounded(&path, 5).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert!(read_bounded(&dir.join("missing"), 5).unwrap().is_none());
        let _ = fs::remove_dir_all(&dir);
    }
}
