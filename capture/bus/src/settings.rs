//! One configuration file per service, under its flags and environment.
//!
//! Every service's command line flattens [`SettingsArgs`]: `--config FILE` (or `NTPSCOPE_CONFIG`)
//! names a TOML file whose keys are the service's long flag names (`batch_size` or
//! `batch-size`; a `[nats]` table's `url` is `nats_url`). Precedence is flags, then environment,
//! then the file, then the built-in default. A key no flag has is an error that lists the known
//! keys, and a value is checked exactly as the same flag would be, so a typo never passes silently.
//!
//! [`load`] does this for any `clap::Parser`: it reads the file, turns each key that neither a
//! flag nor the environment set into a flag, and parses again. `--print-config` shows the result
//! with where each value came from, secrets masked ([`Effective::to_toml`]).

use std::{collections::BTreeSet, ffi::OsString, fmt::Write as _, path::PathBuf};

use clap::{ArgAction, ArgMatches, Parser, parser::ValueSource};

/// `--config` and `--print-config`, flattened into every service's command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SettingsArgs {
    /// TOML file of settings (keys are the long flag names); flags and environment override it.
    #[arg(long, env = "NTPSCOPE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (secrets masked) with the source of each value, and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A flag or value was rejected (also `--help` and `--version`, which clap reports this way).
    #[error(transparent)]
    Clap(#[from] clap::Error),
    /// The file could not be read or is not TOML.
    #[error("cannot read the configuration file {path}: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A key no flag has, or a value of the wrong shape.
    #[error("in the configuration file {path}: {detail}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

/// Where an effective value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// An environment variable.
    Env,
    /// The configuration file.
    File,
    /// The built-in default.
    Default,
}

/// The effective configuration, for `--print-config`.
#[derive(Debug, Clone)]
pub struct Effective {
    /// The service.
    pub service: String,
    /// `(key, values, source)` for every setting that has a value, in flag order.
    pub values: Vec<(String, Vec<String>, Source)>,
    /// Settings that are repeatable (printed as arrays).
    pub lists: BTreeSet<String>,
    /// `--print-config` was given.
    pub print: bool,
}

/// Whether a setting holds a secret value (file paths to secrets are not secrets).
pub fn is_secret(key: &str) -> bool {
    ["password", "token", "secret", "nkey", "seed"].iter().any(|s| key.contains(s)) && !key.ends_with("_file")
}

fn toml_scalar(v: &str) -> String {
    if v == "true" || v == "false" || v.parse::<i64>().is_ok() || (v.parse::<f64>().is_ok_and(f64::is_finite) && v.contains('.')) {
        v.to_string()
    } else {
        let mut s = String::from("\"");
        for c in v.chars() {
            match c {
                '"' => s.push_str("\\\""),
                '\\' => s.push_str("\\\\"),
                c if c.is_control() => {
                    let _ = write!(s, "\\u{:04x}", u32::from(c));
                }
                c => s.push(c),
            }
        }
        s.push('"');
        s
    }
}

impl Effective {
    /// TOML that `--config` accepts back, each line commented with its source; secrets masked.
    pub fn to_toml(&self) -> String {
        let mut out = format!("# Effective configuration of {} (flags > environment > file > defaults).\n", self.service);
        for (key, values, source) in &self.values {
            let shown: Vec<String> =
                values.iter().map(|v| if is_secret(key) { "\"********\"".to_string() } else { toml_scalar(v) }).collect();
            let value = if self.lists.contains(key) { format!("[{}]", shown.join(", ")) } else { shown.join(", ") };
            let from = match source {
                Source::Flag => "flag",
                Source::Env => "environment",
                Source::File => "file",
                Source::Default => "default",
            };
            let _ = writeln!(out, "{key} = {value}  # {from}");
        }
        out
    }
}

const NOT_SETTINGS: [&str; 4] = ["help", "version", "config", "print_config"];

fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() { k.replace('-', "_") } else { format!("{prefix}_{}", k.replace('-', "_")) };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            v => out.push((key, v.clone())),
        }
    }
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Datetime(d) => Some(d.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => None,
    }
}

/// Parses `argv` for service `C`, with the configuration file it names (if any) beneath it.
///
/// # Errors
/// [`SettingsError::Clap`] for bad flags (and for `--help`/`--version`: call `.exit()` on it),
/// [`SettingsError::File`] and [`SettingsError::Key`] for the file.
pub fn load<C: Parser>(argv: impl IntoIterator<Item = impl Into<OsString>>) -> Result<(C, Effective), SettingsError> {
    let mut argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let cmd = C::command();
    let first = cmd.clone().ignore_errors(true).try_get_matches_from(argv.clone())?;
    let path: Option<PathBuf> = first.get_one::<PathBuf>("config").cloned();
    let mut from_file = BTreeSet::new();
    if let Some(path) = &path {
        let text = std::fs::read_to_string(path).map_err(|e| SettingsError::File { path: path.clone(), detail: e.to_string() })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| SettingsError::File { path: path.clone(), detail: e.to_string() })?;
        let mut pairs = Vec::new();
        flatten("", &table, &mut pairs);
        let known: Vec<&clap::Arg> =
            cmd.get_arguments().filter(|a| a.get_long().is_some() && !NOT_SETTINGS.contains(&a.get_id().as_str())).collect();
        for (key, value) in pairs {
            let Some(arg) = known.iter().find(|a| a.get_id().as_str() == key || a.get_long().is_some_and(|l| l.replace('-', "_") == key))
            else {
                let names: Vec<&str> = known.iter().map(|a| a.get_id().as_str()).collect();
                return Err(SettingsError::Key {
                    path: path.clone(),
                    detail: format!("unknown key `{key}`; the known keys are: {}", names.join(", ")),
                });
            };
            if matches!(first.value_source(arg.get_id().as_str()), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
                continue; // flags and environment win
            }
            let long = arg.get_long().unwrap_or_default();
            let bad = |why: &str| SettingsError::Key { path: path.clone(), detail: format!("`{key}`: {why}") };
            let items: Vec<&toml::Value> = match &value {
                toml::Value::Array(a) if matches!(arg.get_action(), ArgAction::Append) => a.iter().collect(),
                toml::Value::Array(_) => return Err(bad("takes one value, not a list")),
                v => vec![v],
            };
            for item in items {
                let v = scalar(item).ok_or_else(|| bad("expected a string, number or boolean"))?;
                match arg.get_action() {
                    ArgAction::SetTrue | ArgAction::SetFalse => match item {
                        toml::Value::Boolean(b) => {
                            if *b == matches!(arg.get_action(), ArgAction::SetTrue) {
                                argv.push(format!("--{long}").into());
                            }
                        }
                        _ => return Err(bad("expected true or false")),
                    },
                    _ => argv.push(format!("--{long}={v}").into()),
                }
            }
            from_file.insert(arg.get_id().to_string());
        }
    }
    let matches: ArgMatches = cmd.clone().try_get_matches_from(argv).map_err(|e| match &path {
        Some(p) if !from_file.is_empty() && e.kind() != clap::error::ErrorKind::DisplayHelp => {
            SettingsError::Key { path: p.clone(), detail: e.render().to_string().trim().to_string() }
        }
        _ => SettingsError::Clap(e),
    })?;
    let cli = C::from_arg_matches(&matches)?;
    let mut values = Vec::new();
    let mut lists = BTreeSet::new();
    for arg in cmd.get_arguments().filter(|a| a.get_long().is_some()) {
        let id = arg.get_id().as_str();
        if NOT_SETTINGS.contains(&id) {
            continue;
        }
        if matches!(arg.get_action(), ArgAction::Append) {
            lists.insert(id.to_string());
        }
        let Some(raw) = matches.get_raw(id) else { continue };
        let vals: Vec<String> = raw.map(|v| v.to_string_lossy().into_owned()).collect();
        let source = match matches.value_source(id) {
            _ if from_file.contains(id) => Source::File,
            Some(ValueSource::CommandLine) => Source::Flag,
            Some(ValueSource::EnvVariable) => Source::Env,
            _ => Source::Default,
        };
        values.push((id.to_string(), vals, source));
    }
    let print = matches.get_flag("print_config");
    Ok((cli, Effective { service: cmd.get_name().to_string(), values, lists, print }))
}

/// For a binary's `main`: [`load`] from the process's arguments. Exits as clap does on `--help`,
/// `--version` and bad flags, with 78 (`EX_CONFIG`) on a bad file, and with 0 after printing
/// the effective configuration for `--print-config`.
pub fn from_env<C: Parser>() -> C {
    match load::<C>(std::env::args_os()) {
        Ok((_, eff)) if eff.print => {
            print!("{}", eff.to_toml());
            std::process::exit(0)
        }
        Ok((cli, _)) => cli,
        Err(SettingsError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("{}: configuration error: {e}", C::command().get_name());
            std::process::exit(78)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Parser)]
    #[command(name = "svc")]
    struct Cli {
        #[arg(long, default_value_t = 100)]
        batch_size: usize,
        #[arg(long, env = "SETTINGS_TEST_URL", default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        #[arg(long)]
        nats_password: Option<String>,
        #[arg(short = 'i', long = "interface")]
        interfaces: Vec<String>,
        #[arg(long)]
        promisc: bool,
        #[command(flatten)]
        settings: SettingsArgs,
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp");
        std::fs::write(f.path(), text).expect("write");
        f
    }

    fn run(args: &[&str]) -> Result<(Cli, Effective), SettingsError> {
        load::<Cli>(std::iter::once("svc").chain(args.iter().copied()))
    }

    #[test]
    fn the_file_sets_what_flags_do_not_and_flags_win() {
        let f = file("batch-size = 500\ninterface = [\"eth0\", \"eth1\"]\npromisc = true\n[nats]\nurl = \"nats://10.0.0.1:4222\"\n");
        let p = f.path().to_str().expect("path");
        let (cli, eff) = run(&["--config", p]).expect("load");
        assert_eq!((cli.batch_size, cli.nats_url.as_str(), cli.interfaces.len(), cli.promisc), (500, "nats://10.0.0.1:4222", 2, true));
        for key in ["batch_size", "interfaces", "promisc", "nats_url"] {
            assert!(eff.values.iter().any(|(k, _, s)| k == key && *s == Source::File), "{key}: {:?}", eff.values);
        }
        // A `false` from the file is the file's, though it equals the default.
        let g = file("promisc = false\n");
        let (_, eff) = run(&["--config", g.path().to_str().expect("path")]).expect("load");
        assert!(eff.values.iter().any(|(k, _, s)| k == "promisc" && *s == Source::File), "{:?}", eff.values);
        let (cli, eff) = run(&["--config", p, "--batch-size", "7"]).expect("load");
        assert_eq!(cli.batch_size, 7);
        assert!(eff.values.iter().any(|(k, _, s)| k == "batch_size" && *s == Source::Flag));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_naming_the_key() {
        let f = file("batch_sise = 5\n");
        let e = run(&["--config", f.path().to_str().expect("path")]).expect_err("typo").to_string();
        assert!(e.contains("unknown key `batch_sise`") && e.contains("batch_size"), "{e}");
        let f = file("batch_size = \"many\"\n");
        let e = run(&["--config", f.path().to_str().expect("path")]).expect_err("type").to_string();
        assert!(e.contains("many") && e.contains("batch-size"), "{e}");
        let f = file("nats_url = [\"a\", \"b\"]\n");
        let e = run(&["--config", f.path().to_str().expect("path")]).expect_err("list").to_string();
        assert!(e.contains("one value"), "{e}");
        let f = file("not toml at all = = =\n");
        assert!(matches!(run(&["--config", f.path().to_str().expect("path")]), Err(SettingsError::File { .. })));
    }

    #[test]
    fn print_config_masks_secrets_and_reads_back() {
        let f = file("nats_password = \"hunter2hunter2\"\nbatch_size = 3\n");
        let (_, eff) = run(&["--config", f.path().to_str().expect("path"), "-i", "eth0"]).expect("load");
        let text = eff.to_toml();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("nats_password = \"********\"  # file"), "{text}");
        assert!(text.contains("interfaces = [\"eth0\"]  # flag"), "{text}");
        // Without the secret line, the printed configuration is itself a valid file.
        let back = text.lines().filter(|l| !l.contains("********")).collect::<Vec<_>>().join("\n");
        let g = file(&back);
        let (cli, _) = run(&["--config", g.path().to_str().expect("path")]).expect("reload");
        assert_eq!((cli.batch_size, cli.interfaces), (3, vec!["eth0".to_string()]));
    }
}
