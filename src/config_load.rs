//! Layered configuration: embedded defaults < TOML file < environment < flags.
//!
//! It exists so that operators can set any key the same way everywhere without a line of code
//! per key: the defaults are serialised to a TOML table, the file's table is merged over it,
//! then every `DISPATCH_SECTION__KEY=value` variable and every flag override (a dotted key and
//! a value), and the result is deserialised into [`Config`] once. Sections deny unknown fields,
//! so a misspelt key fails start-up; the error names the key and where it was set. A field
//! added to [`Config`] with serde derives is therefore configurable from all four layers at
//! once.
//!
//! Values from the environment and flags are strings. A key whose default is a string (an
//! address, a duration such as `15s`, a path, a name) takes the text as is; any other key
//! reads it as a TOML value (`5000`, `true`, `["admin"]`, `[{ name = "a", ... }]`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use crate::config::Config;

/// Prefix of the environment variables read as configuration.
pub const ENV_PREFIX: &str = "DISPATCH_";
/// Variable naming the TOML file, when `--config` is not given.
pub const ENV_CONFIG_FILE: &str = "DISPATCH_CONFIG";

/// Keys renamed since they were introduced: (old dotted key, new dotted key). The old name is
/// still read (file, environment and flags) with a deprecation note; the new one wins if both
/// are set in the same layer.
pub const RENAMED_KEYS: &[(&str, &str)] = &[("telemetry.metrics_listen", "telemetry.http_listen")];

/// Start-up failed because of the configuration; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// One override from the environment or a flag: a dotted key, its text, and where it came from.
#[derive(Clone, Debug)]
pub struct Override {
    /// Dotted path, e.g. `dispatch.offer_timeout`.
    pub key: String,
    /// The value as text.
    pub value: String,
    /// For error messages, e.g. `DISPATCH_DISPATCH__OFFER_TIMEOUT` or `--listen`.
    pub origin: String,
}

/// Reads the layers and returns the validated config.
///
/// `file` is read if given; `env` is every environment variable (only `DISPATCH_*` ones are
/// used; pass `std::env::vars()`); `flags` are applied last, in order.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    flags: &[Override],
) -> Result<Config, ConfigError> {
    load_over(Config::default(), file, env, flags)
}

/// Like [`load`], over `base` instead of `Config::default()` (the daemon's own defaults).
/// Deprecation notes (a renamed key used by its old name) are logged as warnings.
pub fn load_over(
    base: Config,
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    flags: &[Override],
) -> Result<Config, ConfigError> {
    let (config, notes) = load_noting(base, file, env, flags)?;
    for note in notes {
        tracing::warn!("{note}");
    }
    Ok(config)
}

/// Like [`load_over`], returning the deprecation notes instead of logging them (the daemon
/// loads its config before logging is set up, and logs them once it is).
pub fn load_noting(
    base: Config,
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    flags: &[Override],
) -> Result<(Config, Vec<String>), ConfigError> {
    let mut notes = Vec::new();
    let mut origins: BTreeMap<String, String> = BTreeMap::new();
    let mut table = as_table(base);
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        let mut from_file: Table = text
            .parse()
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        rename_in_table(&mut from_file, &path.display().to_string(), &mut notes);
        note_origins(&from_file, "", &path.display().to_string(), &mut origins);
        merge(&mut table, from_file);
    }
    let mut overrides = env_overrides(env)?;
    overrides.extend(flags.iter().cloned());
    for o in &mut overrides {
        if let Some((old, new)) = RENAMED_KEYS.iter().find(|(old, _)| o.key == *old) {
            notes.push(deprecation(old, new, &o.origin));
            o.key = new.to_string();
        }
    }
    for o in &overrides {
        apply(&mut table, o)?;
        origins.insert(o.key.clone(), o.origin.clone());
    }
    let config: Config = serde_path_to_error::deserialize(Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        let origin = origins
            .iter()
            .rev()
            .find(|(k, _)| key == **k || key.starts_with(&format!("{k}.")))
            .map(|(_, o)| format!(" (set in {o})"))
            .unwrap_or_default();
        // toml repeats the path on a second line ("in `a.b`"); the key is named already.
        let why = e.inner().to_string();
        let why = why.lines().next().unwrap_or_default().to_string();
        ConfigError(format!("`{key}`{origin}: {why}"))
    })?;
    config.validate().map_err(ConfigError)?;
    Ok((config, notes))
}

fn deprecation(old: &str, new: &str, origin: &str) -> String {
    format!("`{old}` (set in {origin}) is deprecated and will be removed; use `{new}` instead")
}

/// Moves every renamed key of a file's table to its new name (unless the file sets that too).
fn rename_in_table(table: &mut Table, source: &str, notes: &mut Vec<String>) {
    for (old, new) in RENAMED_KEYS {
        let Some(value) = take_path(table, old) else {
            continue;
        };
        notes.push(deprecation(old, new, source));
        let (sections, last) = match new.rsplit_once('.') {
            Some((sections, last)) => (Some(sections), last),
            None => (None, *new),
        };
        let mut here = &mut *table;
        for part in sections.into_iter().flat_map(|s| s.split('.')) {
            let entry = here
                .entry(part.to_string())
                .or_insert_with(|| Value::Table(Table::new()));
            match entry {
                Value::Table(t) => here = t,
                // Not a section: leave it for deserialisation to name the key.
                _ => return,
            }
        }
        here.entry(last.to_string()).or_insert(value);
    }
}

/// Removes a dotted key's value from a table.
fn take_path(table: &mut Table, key: &str) -> Option<Value> {
    match key.split_once('.') {
        None => table.remove(key),
        Some((first, rest)) => match table.get_mut(first) {
            Some(Value::Table(t)) => take_path(t, rest),
            _ => None,
        },
    }
}

/// The file named by `--config`, else by `DISPATCH_CONFIG`, else none.
pub fn config_file(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var_os(ENV_CONFIG_FILE).map(PathBuf::from))
}

/// The effective config as TOML (what `--print-config` shows), with token secrets redacted.
pub fn to_toml(config: &Config) -> String {
    let mut shown = config.clone();
    for t in &mut shown.auth.tokens {
        t.token = "<redacted>".into();
    }
    // Every field is a string, number, bool, array or table; nothing fails to serialise.
    toml::to_string_pretty(&shown).expect("the config serialises to TOML")
}

/// A config as a TOML table.
fn as_table(config: Config) -> Table {
    match Value::try_from(config) {
        Ok(Value::Table(t)) => t,
        // A struct always serialises to a table; the defaults contain no unsupported value.
        other => unreachable!("defaults did not serialise to a table: {other:?}"),
    }
}

/// `DISPATCH_A__B=v` becomes the override `a.b = v`. `DISPATCH_CONFIG` names the file instead.
fn env_overrides(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Override>, ConfigError> {
    let mut out: Vec<Override> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k != ENV_CONFIG_FILE)
        .map(|(name, value)| Override {
            key: name[ENV_PREFIX.len()..]
                .to_ascii_lowercase()
                .replace("__", "."),
            value,
            origin: name,
        })
        .collect();
    // The process environment has no order; sort so the result never depends on it.
    out.sort_by(|a, b| a.origin.cmp(&b.origin));
    for o in &out {
        if o.key.is_empty() || o.key.split('.').any(str::is_empty) {
            return Err(ConfigError(format!(
                "{}: expected DISPATCH_SECTION__KEY (two underscores between levels)",
                o.origin
            )));
        }
    }
    Ok(out)
}

/// Sets `o.key` in `table`, typing the text by the value it replaces.
fn apply(table: &mut Table, o: &Override) -> Result<(), ConfigError> {
    let parts: Vec<&str> = o.key.split('.').collect();
    let (last, sections) = parts
        .split_last()
        .ok_or_else(|| ConfigError(format!("{}: empty key", o.origin)))?;
    let mut here = table;
    for (depth, part) in sections.iter().enumerate() {
        let entry = here
            .entry(part.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        here = match entry {
            Value::Table(t) => t,
            _ => {
                return Err(ConfigError(format!(
                    "{}: `{}` is a value, not a section",
                    o.origin,
                    parts[..=depth].join(".")
                )));
            }
        };
    }
    let value = match here.get(*last) {
        Some(Value::String(_)) => Value::String(o.value.clone()),
        _ => parse_value(&o.value),
    };
    here.insert(last.to_string(), value);
    Ok(())
}

/// A TOML value if the text is one, else the text as a string.
fn parse_value(text: &str) -> Value {
    format!("v = {text}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(text.to_string()))
}

/// Deep merge: tables merge key by key, anything else is replaced.
fn merge(base: &mut Table, over: Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Records which leaf keys `source` set, for error messages.
fn note_origins(table: &Table, prefix: &str, source: &str, out: &mut BTreeMap<String, String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Table(t) => note_origins(t, &key, source, out),
            _ => {
                out.insert(key, source.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let c = load(None, Vec::new(), &[]).unwrap();
        assert_eq!(to_toml(&c), to_toml(&Config::default()));
    }

    #[test]
    fn env_values_are_typed_by_the_default() {
        let c = load(
            None,
            env(&[
                ("DISPATCH_DISPATCH__MAX_CANDIDATES", "7"),
                ("DISPATCH_DISPATCH__OFFER_TIMEOUT", "2m"),
                ("DISPATCH_LISTEN", "127.0.0.1:7000"),
                ("DISPATCH_TELEMETRY__HTTP_LISTEN", "off"),
                ("HOME", "/root"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(c.dispatch.max_candidates, 7);
        assert_eq!(
            c.dispatch.offer_timeout,
            std::time::Duration::from_secs(120)
        );
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.telemetry.http_listen, None);
    }

    #[test]
    fn the_old_metrics_listen_key_still_works_everywhere_with_a_deprecation_note() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("old.toml");
        std::fs::write(&file, "[telemetry]\nmetrics_listen = \"127.0.0.1:9100\"\n").unwrap();
        let (c, notes) = load_noting(Config::default(), Some(&file), Vec::new(), &[]).unwrap();
        assert_eq!(
            c.telemetry.http_listen,
            Some("127.0.0.1:9100".parse().unwrap())
        );
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("deprecated") && notes[0].contains("telemetry.http_listen"));

        let old_env = env(&[("DISPATCH_TELEMETRY__METRICS_LISTEN", "127.0.0.1:9101")]);
        let (c, notes) = load_noting(Config::default(), None, old_env, &[]).unwrap();
        assert_eq!(
            c.telemetry.http_listen,
            Some("127.0.0.1:9101".parse().unwrap())
        );
        assert!(
            notes[0].contains("DISPATCH_TELEMETRY__METRICS_LISTEN"),
            "{notes:?}"
        );

        let flag = Override {
            key: "telemetry.metrics_listen".into(),
            value: "off".into(),
            origin: "--metrics-listen".into(),
        };
        let (c, notes) = load_noting(Config::default(), None, Vec::new(), &[flag]).unwrap();
        assert_eq!(c.telemetry.http_listen, None);
        assert!(notes[0].contains("--metrics-listen"), "{notes:?}");

        // The new name alone raises no note.
        let new_env = env(&[("DISPATCH_TELEMETRY__HTTP_LISTEN", "off")]);
        let (_, notes) = load_noting(Config::default(), None, new_env, &[]).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn an_unknown_key_is_named() {
        let e = load(None, env(&[("DISPATCH_DISPATCH__OFFER_TIMEOT", "3s")]), &[]).unwrap_err();
        assert!(e.to_string().contains("offer_timeot"), "{e}");
    }
}
