//! The MSRV check that needs no second toolchain: no dependency of the published
//! crates (normal or build, all features) may declare a `rust-version` above the
//! workspace's. The compiler side is clippy's `incompatible_msrv` lint, which reads the
//! same `rust-version`; CI's MSRV job builds with that toolchain itself.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::Result;

/// The crates users depend on.
const PUBLISHED: [&str; 6] = [
    "quic-app",
    "quic-io",
    "quic-h3",
    "quic-masque",
    "quic-doq",
    "quay",
];

/// A version as numbers: "1.88" is (1, 88, 0).
fn version(v: &str) -> (u64, u64, u64) {
    let mut it = v.split('.').map(|p| p.parse().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

/// Checks `cargo metadata`'s output: the dependencies whose `rust-version` is above
/// the workspace's, as `name version (needs X)`.
pub(crate) fn too_new(metadata: &Value) -> Result<(String, Vec<String>)> {
    let packages = metadata["packages"].as_array().ok_or("no packages")?;
    let by_id: HashMap<&str, &Value> = packages
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let roots: Vec<&str> = packages
        .iter()
        .filter(|p| p["source"].is_null())
        .filter(|p| PUBLISHED.contains(&p["name"].as_str().unwrap_or("")))
        .filter_map(|p| p["id"].as_str())
        .collect();
    let msrv = roots
        .first()
        .and_then(|id| by_id[id]["rust_version"].as_str())
        .ok_or("the published crates declare no rust-version")?
        .to_owned();
    let nodes: HashMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .ok_or("no resolve graph")?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let mut seen = HashSet::new();
    let mut stack = roots.clone();
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes
            .get(id)
            .and_then(|n| n["deps"].as_array())
            .into_iter()
            .flatten()
        {
            let kinds = dep["dep_kinds"].as_array().into_iter().flatten();
            let not_dev_only = kinds.clone().any(|k| k["kind"].as_str() != Some("dev"));
            if not_dev_only && let Some(pkg) = dep["pkg"].as_str() {
                stack.push(pkg);
            }
        }
    }
    let mut bad: Vec<String> = seen
        .iter()
        .filter_map(|id| {
            let p = by_id.get(id)?;
            let needs = p["rust_version"].as_str()?;
            (version(needs) > version(&msrv)).then(|| {
                format!(
                    "{} {} (needs {needs})",
                    p["name"].as_str().unwrap_or("?"),
                    p["version"].as_str().unwrap_or("?")
                )
            })
        })
        .collect();
    bad.sort();
    Ok((msrv, bad))
}

/// `cargo metadata`, then [`too_new`]; an error naming every offender.
pub(crate) fn check(env: &crate::prereqs::Env) -> Result {
    let out = env
        .apply(std::process::Command::new("cargo").args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
        ]))
        .current_dir(crate::root())
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let metadata: Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata: {e}"))?;
    let (msrv, bad) = too_new(&metadata)?;
    if bad.is_empty() {
        println!("msrv: every dependency of the published crates builds with Rust {msrv}");
        Ok(())
    } else {
        Err(format!(
            "dependencies that need a newer Rust than the workspace's rust-version {msrv}: {}",
            bad.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    fn metadata(dep_rust_version: &str, kind: Option<&str>) -> serde_json::Value {
        json!({
            "packages": [
                {"id": "quay", "name": "quay", "version": "0.1.0", "source": null,
                 "rust_version": "1.88"},
                {"id": "dep", "name": "dep", "version": "2.0.0",
                 "source": "registry+https://github.com/rust-lang/crates.io-index",
                 "rust_version": dep_rust_version},
            ],
            "resolve": {"nodes": [
                {"id": "quay", "deps": [{"pkg": "dep", "dep_kinds": [{"kind": kind}]}]},
                {"id": "dep", "deps": []},
            ]}
        })
    }

    #[test]
    fn a_dependency_above_the_msrv_is_named_and_dev_dependencies_do_not_count() {
        let (msrv, bad) = super::too_new(&metadata("1.90", None)).unwrap();
        assert_eq!(msrv, "1.88");
        assert_eq!(bad, ["dep 2.0.0 (needs 1.90)"]);
        assert!(
            super::too_new(&metadata("1.88.0", None))
                .unwrap()
                .1
                .is_empty()
        );
        assert!(
            super::too_new(&metadata("1.70", Some("build")))
                .unwrap()
                .1
                .is_empty()
        );
        assert!(
            super::too_new(&metadata("1.99", Some("dev")))
                .unwrap()
                .1
                .is_empty()
        );
        assert_eq!(
            super::too_new(&metadata("1.99", Some("build")))
                .unwrap()
                .1
                .len(),
            1
        );
    }
}
