//! The `kopilka` binary run as a user runs it, on a data directory of its own.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temporary directory holding the store (`data/`) and any files a test writes.
pub struct Kopilka {
    pub dir: tempfile::TempDir,
}

impl Kopilka {
    pub fn new() -> Kopilka {
        Kopilka { dir: tempfile::tempdir().expect("a temp dir") }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("writes");
        path
    }

    /// The command on this directory's store, not yet run.
    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kopilka"));
        command.arg("--data-dir").arg(self.path("data")).env("RUST_LOG", "warn").env("RUST_BACKTRACE", "0");
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("the binary runs")
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(output.status.success(), "kopilka {args:?} failed:\n{}", text(&output));
        String::from_utf8(output.stdout).expect("utf-8")
    }

    pub fn export(&self, kind: &str, tenant: &str) -> String {
        self.ok(&["export", kind, "--tenant", tenant])
    }
}

/// What a run printed, stdout then stderr.
pub fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

pub fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}
