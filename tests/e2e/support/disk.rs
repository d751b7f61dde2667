//! A directory whose writes a test can make fail as on a full disk, and then succeed
//! again, without touching the machine's real disks.
//!
//! 1. `let disk = SmallDisk::new();` and put weir's files under `disk.path()`.
//! 2. Start weir with `disk.weir(builder)` (see [`SmallDisk::weir`]).
//! 3. `disk.fill(&weir)`: weir's writes there fail from now on; `disk.free(&weir)`: they
//!    work again.
//!
//! Two ways, the first that this machine allows:
//!
//! - **A small tmpfs** mounted on a temp dir (needs `mount`, i.e. root with
//!   `CAP_SYS_ADMIN`, as the test containers have). `fill` writes a filler file until
//!   the kernel answers `ENOSPC`: a real full filesystem, where blocks already written
//!   can still be rewritten and every new block fails. `free` deletes the filler.
//! - **`RLIMIT_FSIZE`** when mounting is refused (an unprivileged container): weir runs
//!   with `SIGXFSZ` ignored (a wrapper script sets it; an ignored signal survives
//!   `exec`), and `fill` lowers weir's file-size limit to 0 with `prlimit(1)`, so every
//!   write to a file fails with `EFBIG` instead of killing weir. `free` sets it back to
//!   the hard limit. Lowering and restoring one's own child's soft limit needs no privilege.
//!
//! `WEIR_TEST_DISK=fsize` forces the second way, to test it where the first works.
//! Either way weir sees a write fail with an I/O error, which is what it must survive.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use super::weir::{Weir, WeirBuilder, weir_bin};

/// `ENOSPC` on Linux.
const ENOSPC: i32 = 28;
/// The tmpfs's size: room for a few jobs with megabyte results.
const TMPFS_SIZE: &str = "32m";

/// How a [`SmallDisk`] fails writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// A tmpfs, filled to the last block.
    Tmpfs,
    /// weir's `RLIMIT_FSIZE`, lowered to 0.
    FileSize,
}

/// A directory on its own small filesystem, or watched by a file-size limit.
pub struct SmallDisk {
    dir: TempDir,
    how: How,
}

impl SmallDisk {
    /// A tmpfs on a new temp dir, or, when this machine refuses the mount (or
    /// `WEIR_TEST_DISK=fsize`), a plain temp dir and the file-size limit.
    pub fn new() -> SmallDisk {
        let dir = tempfile::Builder::new()
            .prefix("weir-disk-")
            .tempdir()
            .expect("temp dir");
        let forced = std::env::var("WEIR_TEST_DISK").is_ok_and(|v| v == "fsize");
        let mounted = !forced
            && Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_SIZE},mode=0700")])
                .arg("weir-test")
                .arg(dir.path())
                .output()
                .is_ok_and(|o| o.status.success());
        let how = if mounted { How::Tmpfs } else { How::FileSize };
        eprintln!("SmallDisk: {how:?} at {}", dir.path().display());
        SmallDisk { dir, how }
    }

    /// Which way it fails writes.
    pub fn how(&self) -> How {
        self.how
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `builder`, set up so that [`Self::fill`] works on the weir it starts: with the
    /// file-size limit, weir runs through a wrapper that ignores `SIGXFSZ` and then
    /// execs it (so the pid is weir's).
    pub fn weir(&self, builder: WeirBuilder) -> WeirBuilder {
        match self.how {
            How::Tmpfs => builder,
            How::FileSize => {
                let wrapper = self.wrapper();
                builder.binary(wrapper)
            }
        }
    }

    /// Makes every new write under [`Self::path`] (by `weir`) fail.
    pub fn fill(&self, weir: &Weir) {
        match self.how {
            How::Tmpfs => {
                let mut filler = std::fs::File::create(self.filler()).expect("create the filler");
                let block = vec![0xA5u8; 64 << 10];
                // Big writes first, then page by page: ENOSPC once not one more page fits.
                for size in [block.len(), 4096] {
                    let error = loop {
                        if let Err(e) = filler.write_all(&block[..size]) {
                            break e;
                        }
                    };
                    assert_eq!(
                        error.raw_os_error(),
                        Some(ENOSPC),
                        "filling the tmpfs ended with {error}, not ENOSPC"
                    );
                }
            }
            How::FileSize => {
                prlimit(weir, &["--fsize=0:"]);
            }
        }
    }

    /// Undoes [`Self::fill`].
    pub fn free(&self, weir: &Weir) {
        match self.how {
            How::Tmpfs => std::fs::remove_file(self.filler()).expect("remove the filler"),
            How::FileSize => {
                let hard = prlimit(weir, &["--fsize", "--output=HARD", "--noheadings", "--raw"]);
                prlimit(weir, &[&format!("--fsize={}:", hard.trim())]);
            }
        }
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    /// A script that runs weir with `SIGXFSZ` ignored, next to the directory.
    fn wrapper(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path().with_extension("weir.sh");
        let script = format!(
            "#!/bin/sh\n# SIGXFSZ ignored: a write past RLIMIT_FSIZE fails with EFBIG instead of killing weir.\ntrap '' XFSZ\nexec '{}' \"$@\"\n",
            weir_bin().display()
        );
        std::fs::write(&path, script).expect("write the weir wrapper");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("make the wrapper executable");
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        match self.how {
            // Lazy: a process still holding a file there does not keep the mount.
            How::Tmpfs => {
                let _ = Command::new("umount").arg("-l").arg(self.path()).status();
            }
            How::FileSize => {
                let _ = std::fs::remove_file(self.path().with_extension("weir.sh"));
            }
        }
    }
}

/// Runs `prlimit` on weir with `args` (`--fsize=SOFT:` sets the soft file-size limit and
/// keeps the hard one); returns its output.
fn prlimit(weir: &Weir, args: &[&str]) -> String {
    let out = Command::new("prlimit")
        .arg(format!("--pid={}", weir.pid()))
        .args(args)
        .output()
        .expect("run prlimit (util-linux)");
    assert!(
        out.status.success(),
        "prlimit {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
