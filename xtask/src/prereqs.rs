//! The native tools BoringSSL's build needs: cmake, and libclang for bindgen.
//!
//! Order of preference: what the system has; else Debian packages via apt-get when
//! running as root; else the PyPI wheels `cmake` and `libclang` installed into
//! `target/tools/`, with `CMAKE` and `LIBCLANG_PATH` pointing at them; else a message
//! saying what to install.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Result, root};

/// Environment variables the build steps need on top of the inherited ones.
#[derive(Debug, Default, Clone)]
pub(crate) struct Env {
    vars: Vec<(&'static str, String)>,
}

impl Env {
    /// This environment plus one variable.
    pub(crate) fn with(&self, key: &'static str, value: &str) -> Env {
        let mut env = self.clone();
        env.vars.push((key, value.to_owned()));
        env
    }

    pub(crate) fn apply<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        cmd
    }
}

pub(crate) fn ensure() -> Result<Env> {
    let mut env = Env::default();
    let has_cmake = find_cmake().is_some();
    let has_libclang = find_libclang().is_some();
    if has_cmake && has_libclang {
        return Ok(env);
    }
    let missing = missing_list(has_cmake, has_libclang);
    println!("==> native prerequisites missing: {missing}");
    if is_root() && succeeds("apt-get", &["--version"]) {
        let mut packages = Vec::new();
        if !has_cmake {
            packages.push("cmake");
        }
        if !has_libclang {
            packages.push("libclang-dev");
        }
        println!("==> installing {} with apt-get", packages.join(" "));
        let updated = Command::new("apt-get")
            .args(["update", "-qq"])
            .status()
            .is_ok_and(|s| s.success());
        let installed = updated
            && Command::new("apt-get")
                .args(["install", "-y", "-qq"])
                .args(&packages)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success());
        if installed && find_cmake().is_some() && find_libclang().is_some() {
            return Ok(env);
        }
        println!("==> apt-get did not provide them; trying PyPI");
    }
    let tools = root().join("target/tools/py");
    if pip_install(&tools) {
        let cmake = tools.join("cmake/data/bin/cmake");
        let libclang_dir = tools.join("clang/native");
        if find_cmake().is_none() && cmake.is_file() {
            env.vars.push(("CMAKE", cmake.display().to_string()));
            let path = std::env::var("PATH").unwrap_or_default();
            env.vars.push((
                "PATH",
                format!("{}:{path}", tools.join("cmake/data/bin").display()),
            ));
        }
        if find_libclang().is_none() && has_libclang_in(&libclang_dir) {
            env.vars
                .push(("LIBCLANG_PATH", libclang_dir.display().to_string()));
        }
        let cmake_ok = find_cmake().is_some() || env.vars.iter().any(|(k, _)| *k == "CMAKE");
        let clang_ok =
            find_libclang().is_some() || env.vars.iter().any(|(k, _)| *k == "LIBCLANG_PATH");
        if cmake_ok && clang_ok {
            return Ok(env);
        }
    }
    Err(format!(
        "missing {missing}: BoringSSL (through quiche) needs cmake and libclang to build.\n\
         Install them, e.g. `apt-get install cmake libclang-dev` (Debian/Ubuntu), \
         `dnf install cmake clang-devel` (Fedora) or `brew install cmake llvm` (macOS), \
         or set CMAKE and LIBCLANG_PATH"
    ))
}

fn missing_list(has_cmake: bool, has_libclang: bool) -> String {
    let mut m = Vec::new();
    if !has_cmake {
        m.push("cmake");
    }
    if !has_libclang {
        m.push("libclang");
    }
    m.join(" and ")
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn find_cmake() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CMAKE")
        && Path::new(&p).is_file()
    {
        return Some(p.into());
    }
    succeeds("cmake", &["--version"]).then(|| PathBuf::from("cmake"))
}

fn find_libclang() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(p) = std::env::var("LIBCLANG_PATH") {
        dirs.push(p.into());
    }
    if let Ok(o) = Command::new("llvm-config").arg("--libdir").output() {
        dirs.push(String::from_utf8_lossy(&o.stdout).trim().into());
    }
    for base in ["/usr/lib", "/usr/lib64", "/usr/local/lib"] {
        dirs.push(base.into());
        dirs.push(Path::new(base).join("x86_64-linux-gnu"));
        dirs.push(Path::new(base).join("aarch64-linux-gnu"));
        if let Ok(entries) = std::fs::read_dir(base) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("llvm") {
                    dirs.push(e.path().join("lib"));
                }
            }
        }
    }
    dirs.into_iter().find(|d| has_libclang_in(d))
}

fn has_libclang_in(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("libclang")
                && !name.starts_with("libclang-cpp")
                && name.contains(".so")
                || name == "libclang.dylib"
        })
    })
}

fn pip_install(target: &Path) -> bool {
    println!(
        "==> installing cmake and libclang from PyPI into {}",
        target.display()
    );
    let python = if succeeds("python3", &["--version"]) {
        "python3"
    } else {
        "python"
    };
    Command::new(python)
        .args(["-m", "pip", "install", "--quiet", "--upgrade", "--target"])
        .arg(target)
        .args(["cmake", "libclang"])
        .status()
        .is_ok_and(|s| s.success())
}
