//! External programs some tests drive (promtool, HAProxy): found on PATH or
//! installed with apt-get. A tool that cannot be installed fails the test;
//! it is never skipped.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// apt/dpkg take a lock; tests of one binary install one at a time.
static INSTALL: Mutex<()> = Mutex::new(());

fn on_path(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

fn apt_get(args: &[&str]) -> Result<(), String> {
    let out = Command::new("apt-get")
        .args(["-o", "DPkg::Lock::Timeout=300", "-q", "-y"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "apt-get {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The path of `bin`, installing Debian package `package` if it is missing.
/// Panics (fails the test) when it cannot be had.
pub fn ensure(bin: &str, package: &str) -> PathBuf {
    let _g = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = on_path(bin) {
        return p;
    }
    eprintln!("{bin} is missing: installing the Debian package {package}");
    let install = ["install", "--no-install-recommends", package];
    if let Err(first) = apt_get(&install) {
        eprintln!("{first}; refreshing the package lists and retrying");
        apt_get(&["update"]).unwrap_or_else(|e| panic!("{e}"));
        apt_get(&install).unwrap_or_else(|e| panic!("{e}"));
    }
    on_path(bin).unwrap_or_else(|| panic!("{package} is installed but {bin} is not on PATH"))
}
