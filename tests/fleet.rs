//! A fleet of separate hosts on one machine: `scripts/fleet.sh`, short. Two edges, two
//! regions and an origin, each in a network namespace of its own, regions named by DNS; a
//! task deployed once to each region, a Zipf workload through both edges, a region killed
//! mid-run. Needs root and network namespaces: skipped, with the reason printed, without.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic here fails a test or a bench run

use std::process::Command;

use serde_json::Value;

/// Why this machine cannot make the fleet's namespaces, if it cannot.
fn cannot_make_namespaces() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    let name = format!("pf-probe-{}", std::process::id());
    let added = Command::new("ip").args(["netns", "add", &name]).output();
    match added {
        Ok(out) if out.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
            None
        }
        Ok(out) => Some(format!(
            "ip netns add: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("no ip command: {e}")),
    }
}

/// The answers of one phase of one route at one edge, `"status placement" -> count`.
fn answers<'a>(edge: &'a Value, phase: &str, route: &str) -> Vec<(&'a str, u64)> {
    edge["phases"][phase][route]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.as_str(), v.as_u64().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_fleet_forwards_home_fails_over_and_runs_code_deployed_once() {
    if let Some(why) = cannot_make_namespaces() {
        eprintln!("SKIPPED a_fleet_...: this machine cannot make network namespaces ({why})");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let summary_file = dir.path().join("summary.json");
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/fleet.sh"))
        .args(["--requests", "1600", "--summary"])
        .arg(&summary_file)
        .env("POPLAR_BIN", env!("CARGO_BIN_EXE_poplar"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fleet.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_file).unwrap()).unwrap();
    let text = serde_json::to_string_pretty(&summary).unwrap();
    eprintln!("{text}");

    let digest = summary["deployed_digest"].as_str().unwrap();
    for (edge, home, other) in [("edge1", "west", "east"), ("edge2", "east", "west")] {
        let e = &summary["edges"][edge];
        // Zero client-visible errors, before the kill and after it.
        assert_eq!(e["errors"], 0, "{edge}: {text}");
        assert!(e["requests"].as_u64().unwrap() >= 300, "{edge}: {text}");
        // Before: the pinned task went to the edge's home region, and only there.
        let before = answers(e, "before", "far");
        assert!(!before.is_empty(), "{edge}: {text}");
        for (answer, _) in &before {
            let home_answer = format!("200 region; name={home}; reason=pinned");
            assert_eq!(*answer, home_answer, "{edge}: {text}");
        }
        // The code deployed once to the regions ran at the edge (during the workload, or
        // in the bounded wait after it), its digest the deployed one.
        assert!(
            e["inline_after_workload_s"].is_number(),
            "{edge} never ran it inline: {text}"
        );
        assert_eq!(e["greet"]["digest"], digest, "{edge}: {text}");
        assert_eq!(e["greet"]["from"], "regions", "{edge}: {text}");
        // Regions by DNS name, resolved.
        for r in e["regions"].as_array().unwrap() {
            let name = r["name"].as_str().unwrap();
            assert_eq!(r["address"], format!("{name}.fleet.internal:8080"));
            assert_eq!(r["resolved"].as_array().unwrap().len(), 1, "{text}");
        }
        // After west died: everything pinned went to east.
        let after = answers(e, "after", "far");
        assert!(!after.is_empty(), "{edge}: {text}");
        for (answer, _) in &after {
            assert_eq!(
                *answer, "200 region; name=east; reason=pinned",
                "{edge} ({home}, {other}): {text}"
            );
        }
    }
    // Every host served its metrics before the kill; the killed one is gone after it.
    for host in ["edge1", "edge2", "west", "east"] {
        let samples = summary["metrics_before_kill"][host]["samples"].as_u64();
        assert!(samples.unwrap_or(0) > 10, "{host}: {text}");
    }
    assert!(
        summary["metrics_after"]["west"]["error"].is_string(),
        "{text}"
    );
    let west_at_edge1 = summary["edges"]["edge1"]["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "west")
        .unwrap();
    assert_eq!(west_at_edge1["healthy"], false, "{text}");
}
