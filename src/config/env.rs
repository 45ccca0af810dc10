//! The environment layer: `FASPEX_GATE__SECTION__KEY` variables that override the TOML file.
//!
//! `FASPEX_GATE__AUTH__LDAP__URLS` is the key `auth.ldap.urls`: the prefix `FASPEX_GATE` and the
//! separator `__` (also between prefix and key), case-insensitive. `FASPEX_GATE_CONFIG`, with one
//! underscore, is not a key and is ignored. List keys ([`list_keys`]: every key that is a list in
//! the file) take comma-separated values; whitespace around each comma is dropped, and an empty
//! value is an empty list.
//!
//! The variables are handed to the `config` crate as two `Environment` sources: list keys with
//! `try_parsing`, `list_separator` and `with_list_parse_key`, everything else as plain strings (so
//! that `007` stays `007` in a string field; the strict deserializers of `raw.rs` read numbers and
//! booleans from strings). Two cases that `config` would not turn into a list, an empty value and
//! a single value that looks like a number or a boolean, are set as explicit overrides.
//!
//! [`EnvLayer::source_of`] tells error messages which variable set a key.

use config::builder::DefaultState;
use config::{ConfigBuilder, Environment};

use super::raw::RawConfig;

/// The variable-name prefix.
pub(crate) const PREFIX: &str = "FASPEX_GATE";
/// Between the prefix and the key, and between a section and its key.
pub(crate) const SEPARATOR: &str = "__";
/// The keys that take a comma-separated list in the environment: every key whose value is a list
/// in the file, read from the file's own schema (the default [`RawConfig`], serialized), so that a
/// list key added to the file is one here too. A list that is not in this set would reach the
/// strict deserializer as a string and be refused.
pub(crate) fn list_keys() -> Vec<String> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (name, inner) in map {
                    let key = if prefix.is_empty() {
                        name.clone()
                    } else {
                        format!("{prefix}.{name}")
                    };
                    walk(&key, inner, out);
                }
            }
            serde_json::Value::Array(_) => out.push(prefix.to_owned()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    // (serializing plain structs of strings, numbers and lists cannot fail; an empty list of keys
    // would only make every list override refused, never accepted wrongly)
    if let Ok(schema) = serde_json::to_value(RawConfig::default()) {
        walk("", &schema, &mut out);
    }
    out
}
const LIST_SEPARATOR: &str = ",";

/// One `FASPEX_GATE__…` variable.
#[derive(Clone, Debug)]
struct EnvVar {
    /// The variable's name as given, for messages.
    name: String,
    /// The dotted key it sets, e.g. `policy.idle_timeout`.
    key: String,
    value: String,
}

/// The `FASPEX_GATE__…` variables of one environment.
#[derive(Clone, Debug, Default)]
pub(crate) struct EnvLayer {
    vars: Vec<EnvVar>,
}

/// A `FASPEX_GATE__…` variable that cannot be used: it names no key (`FASPEX_GATE__`,
/// `FASPEX_GATE__SERVER____LISTEN`), or another variable sets the same key (they differ only in
/// letter case).
#[derive(Debug)]
pub(crate) struct EnvError {
    /// The dotted key, as far as there is one.
    pub key: String,
    pub reason: String,
}

impl EnvLayer {
    /// Pick the `FASPEX_GATE__…` variables out of an environment.
    pub fn new(env: &[(String, String)]) -> Result<Self, EnvError> {
        let pattern = format!("{PREFIX}{SEPARATOR}").to_ascii_lowercase();
        let mut vars: Vec<EnvVar> = Vec::new();
        for (name, value) in env {
            let lower = name.to_ascii_lowercase();
            let Some(rest) = lower.strip_prefix(&pattern) else {
                continue;
            };
            let key = rest.replace(SEPARATOR, ".");
            if key.split('.').any(str::is_empty) {
                return Err(EnvError {
                    key,
                    reason: format!(
                        "environment variable {name} does not name a key; write \
                         {PREFIX}{SEPARATOR}SECTION{SEPARATOR}KEY, e.g. \
                         {PREFIX}{SEPARATOR}POLICY{SEPARATOR}IDLE_TIMEOUT"
                    ),
                });
            }
            if let Some(seen) = vars.iter().find(|v| v.key == key) {
                return Err(EnvError {
                    reason: format!("set by both {} and {name}; keep one", seen.name),
                    key,
                });
            }
            vars.push(EnvVar {
                name: name.clone(),
                key,
                value: value.clone(),
            });
        }
        Ok(Self { vars })
    }

    /// The variable that set `key` (e.g. `policy.idle_timeout`; `faspex.deny[1]`, which the
    /// whole `faspex.deny` list sets; or `server`, which `FASPEX_GATE__SERVER__X` reshapes), if
    /// any.
    pub fn source_of(&self, key: &str) -> Option<&str> {
        let base = key.split('[').next().unwrap_or(key);
        let within = |inner: &str, outer: &str| {
            inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        };
        self.vars
            .iter()
            .find(|v| !base.is_empty() && (within(base, &v.key) || within(&v.key, base)))
            .map(|v| v.name.as_str())
    }

    /// The same variables with their values dropped: enough for [`EnvLayer::source_of`], and
    /// nothing a configuration should carry around.
    pub fn names_only(&self) -> Self {
        EnvLayer {
            vars: self
                .vars
                .iter()
                .map(|v| EnvVar {
                    name: v.name.clone(),
                    key: v.key.clone(),
                    value: String::new(),
                })
                .collect(),
        }
    }

    /// Add this layer to a builder, after the file.
    pub fn apply(
        &self,
        mut builder: ConfigBuilder<DefaultState>,
    ) -> Result<ConfigBuilder<DefaultState>, config::ConfigError> {
        let list_keys = list_keys();
        let mut scalars = config::Map::new();
        let mut lists = config::Map::new();
        for var in &self.vars {
            if !list_keys.contains(&var.key) {
                scalars.insert(var.name.clone(), var.value.clone());
                continue;
            }
            let items: Vec<&str> = var.value.split(LIST_SEPARATOR).map(str::trim).collect();
            let joined = items.join(LIST_SEPARATOR);
            if joined.is_empty() {
                builder = builder.set_override(&var.key, Vec::<String>::new())?;
            } else if looks_scalar(&joined) {
                let items: Vec<String> = items.into_iter().map(String::from).collect();
                builder = builder.set_override(&var.key, items)?;
            } else {
                lists.insert(var.name.clone(), joined);
            }
        }
        let base = || {
            Environment::with_prefix(PREFIX)
                .prefix_separator(SEPARATOR)
                .separator(SEPARATOR)
        };
        let mut list_source = base()
            .try_parsing(true)
            .list_separator(LIST_SEPARATOR)
            .source(Some(lists));
        for key in &list_keys {
            list_source = list_source.with_list_parse_key(key);
        }
        Ok(builder
            .add_source(base().source(Some(scalars)))
            .add_source(list_source))
    }
}

/// Whether `config`'s `try_parsing` would read this value as a boolean or a number rather than a
/// list.
fn looks_scalar(value: &str) -> bool {
    value.to_lowercase().parse::<bool>().is_ok()
        || value.parse::<i64>().is_ok()
        || value.parse::<f64>().is_ok()
}

/// The process environment, skipping variables whose name or value is not Unicode (a
/// `FASPEX_GATE__…` one of those could not be a valid setting anyway; it is reported).
pub(crate) fn process_env() -> Result<Vec<(String, String)>, String> {
    let pattern = format!("{PREFIX}{SEPARATOR}").to_ascii_lowercase();
    let mut out = Vec::new();
    for (name, value) in std::env::vars_os() {
        match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => out.push((name, value)),
            (Ok(name), Err(_)) if name.to_ascii_lowercase().starts_with(&pattern) => {
                return Err(format!("environment variable {name} is not valid UTF-8"));
            }
            _ => {}
        }
    }
    Ok(out)
}
