//! Configuration: defaults < TOML file < DISPATCH_* environment < flags, and invalid settings
//! fail start-up with a message naming the key. Library-level through `config_load::load`, and
//! end to end through `dispatchd --print-config`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use dispatch::config::{Config, LogFormat, Role};
use dispatch::config_load::{self, Override};

/// A file under the system temp dir, unique to this test process and `name`.
fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dispatch-ops-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn flag(key: &str, value: &str) -> Override {
    Override {
        key: key.into(),
        value: value.into(),
        origin: format!("--{key}"),
    }
}

const FILE: &str = r#"
listen = "127.0.0.1:6001"
[dispatch]
offer_timeout = "20s"
max_candidates = 5
search_radius_m = 3000
[telemetry]
log_format = "json"
[[auth.tokens]]
name = "gw-1"
token = "0123456789abcdef-driver"
roles = ["driver-gateway"]
"#;

#[test]
fn each_layer_overrides_the_one_below() {
    let file = temp_file("layers.toml", FILE);
    let config = config_load::load(
        Some(&file),
        env(&[
            ("DISPATCH_DISPATCH__MAX_CANDIDATES", "6"),
            ("DISPATCH_DISPATCH__SEARCH_RADIUS_M", "4000"),
            ("DISPATCH_SURGE__WINDOW", "90s"),
            ("PATH", "/usr/bin"),
        ]),
        &[flag("dispatch.search_radius_m", "4500")],
    )
    .unwrap();
    let defaults = Config::default();
    // Default only.
    assert_eq!(
        config.dispatch.dispatch_timeout,
        defaults.dispatch.dispatch_timeout
    );
    // File over default.
    assert_eq!(config.listen.port(), 6001);
    assert_eq!(config.dispatch.offer_timeout, Duration::from_secs(20));
    assert_eq!(config.telemetry.log_format, LogFormat::Json);
    assert_eq!(config.auth.tokens[0].roles, vec![Role::DriverGateway]);
    // Environment over file (and over default).
    assert_eq!(config.dispatch.max_candidates, 6);
    assert_eq!(config.surge.window, Duration::from_secs(90));
    // Flag over environment over file.
    assert_eq!(config.dispatch.search_radius_m, 4500.0);
}

#[test]
fn errors_name_the_key_and_where_it_was_set() {
    let err = |file: Option<&str>, vars: &[(&str, &str)], flags: &[Override]| {
        let path = file.map(|f| temp_file("bad.toml", f));
        config_load::load(path.as_deref(), env(vars), flags)
            .unwrap_err()
            .to_string()
    };
    let e = err(Some("[dispatch]\nofer_timeout = \"3s\"\n"), &[], &[]);
    assert!(e.contains("ofer_timeout") && e.contains("dispatch"), "{e}");
    let e = err(
        None,
        &[("DISPATCH_DISPATCH__OFFER_TIMEOUT", "15 parsecs")],
        &[],
    );
    assert!(
        e.contains("dispatch.offer_timeout") && e.contains("DISPATCH_DISPATCH__OFFER_TIMEOUT"),
        "{e}"
    );
    let e = err(None, &[], &[flag("limits.control_queue", "lots")]);
    assert!(
        e.contains("limits.control_queue") && e.contains("--limits"),
        "{e}"
    );
    let e = err(None, &[("DISPATCH_DISPATCH__MAX_CANDIDATES", "0")], &[]);
    assert!(e.contains("dispatch.max_candidates"), "{e}");
    let e = err(Some("[tls]\ncert_path = \"/x.pem\"\n"), &[], &[]);
    assert!(e.contains("tls.key_path"), "{e}");
    let e = err(
        Some("[[auth.tokens]]\nname = \"a\"\ntoken = \"short\"\nroles = [\"admin\"]\n"),
        &[],
        &[],
    );
    assert!(e.contains("auth.tokens[0].token"), "{e}");
    let e = err(
        Some("[[auth.tokens]]\nname = \"a\"\ntoken = \"0123456789abcdefgh\"\nroles = [\"root\"]\n"),
        &[],
        &[],
    );
    assert!(e.contains("auth.tokens") && e.contains("root"), "{e}");
    let e = err(Some("listen = [unclosed\n"), &[], &[]);
    assert!(e.contains("bad.toml"), "{e}");
    let e = err(
        None,
        &[("DISPATCH_TELEMETRY__METRICS_LISTEN", "nowhere")],
        &[],
    );
    // The old name is read as the new key; the error names both the key and where it was set.
    assert!(e.contains("telemetry.http_listen"), "{e}");
    assert!(e.contains("DISPATCH_TELEMETRY__METRICS_LISTEN"), "{e}");
}

#[test]
fn print_config_shows_the_effective_config_and_round_trips() {
    let file = temp_file("print.toml", FILE);
    let out = Command::new(env!("CARGO_BIN_EXE_dispatchd"))
        .args(["--config", file.to_str().unwrap(), "--print-config"])
        .args(["--max-candidates", "9", "--set", "surge.max_multiplier=2.5"])
        .env("DISPATCH_DISPATCH__OFFER_TIMEOUT", "30s")
        .env("DISPATCH_DISPATCH__MAX_CANDIDATES", "8")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let printed: toml::Table = text.parse().unwrap();
    assert_eq!(printed["listen"].as_str(), Some("127.0.0.1:6001"));
    assert_eq!(printed["dispatch"]["offer_timeout"].as_str(), Some("30s"));
    assert_eq!(printed["dispatch"]["max_candidates"].as_integer(), Some(9));
    assert_eq!(printed["surge"]["max_multiplier"].as_float(), Some(2.5));
    // The secret is never printed.
    assert!(!text.contains("0123456789abcdef-driver"), "{text}");
    assert!(text.contains("gw-1"));
    // What it prints (secrets aside) loads back as the same config.
    let again = temp_file(
        "again.toml",
        &text.replace("<redacted>", "0123456789abcdef-other"),
    );
    let reloaded = config_load::load(Some(&again), Vec::new(), &[]).unwrap();
    assert_eq!(reloaded.dispatch.max_candidates, 9);
    assert_eq!(reloaded.dispatch.offer_timeout, Duration::from_secs(30));
}

#[test]
fn dispatchd_refuses_to_start_on_invalid_config_naming_the_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_dispatchd"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .env("DISPATCH_LIMITS__DRAIN_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("limits.drain_timeout"), "{stderr}");
    assert!(out.stdout.is_empty(), "it must not start listening");
}
