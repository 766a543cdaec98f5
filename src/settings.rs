//! Loading the configuration: defaults < TOML file < `SOCKEYE_*` environment
//! < command line, then validation.

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use sockeye_broker::Config;

use crate::cli::CommonArgs;

/// The default configuration file, printed by `sockeye config`.
pub(crate) const DEFAULT_CONFIG: &str = include_str!("../config/default.toml");

/// The top-level sections of the configuration file.
const SECTIONS: [&str; 11] = [
    "server",
    "admin",
    "auth",
    "limits",
    "heartbeat",
    "websocket",
    "store",
    "retention",
    "shutdown",
    "tls",
    "engine",
];

/// True if an environment key (prefix stripped, `__` turned into `.`, in
/// whatever case it was written) starts with one of our sections.
fn is_section_key(key: &str) -> bool {
    let section = key.split('.').next().unwrap_or_default();
    SECTIONS
        .iter()
        .any(|known| known.eq_ignore_ascii_case(section))
}

/// Builds the configuration from every layer and validates it.
pub(crate) fn load(
    common: &CommonArgs,
    overrides: Vec<(&'static str, String)>,
) -> anyhow::Result<Config> {
    let mut figment = Figment::new();
    if let Some(path) = &common.config {
        anyhow::ensure!(
            path.exists(),
            "config file {} does not exist",
            path.display()
        );
        figment = figment.merge(Toml::file(path));
    }
    // Only variables naming one of our sections are configuration, so an
    // unrelated SOCKEYE_SOMETHING in the environment cannot stop the broker;
    // a wrong key inside a known section is still an error.
    figment = figment.merge(
        Env::prefixed("SOCKEYE_")
            .split("__")
            .filter(|key| is_section_key(key.as_str())),
    );
    if let Some(data_dir) = &common.data_dir {
        figment = figment.merge(Serialized::default("server.data_dir", data_dir));
    }
    for (key, value) in overrides {
        figment = figment.merge(Serialized::default(key, value));
    }
    let config: Config = figment.extract().context("invalid configuration")?;
    config.validate().context("invalid configuration")?;
    Ok(config)
}

#[cfg(test)]
// figment's Jail closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_default_file_is_the_default_config() {
        let parsed: Config = Figment::from(Toml::string(DEFAULT_CONFIG))
            .extract()
            .expect("config/default.toml parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn sections_list_every_top_level_key() {
        let defaults = toml::Table::try_from(Config::default()).expect("config serializes");
        let mut keys: Vec<&str> = defaults.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut sections = SECTIONS.to_vec();
        sections.sort_unstable();
        assert_eq!(keys, sections);
    }

    #[test]
    fn environment_variables_override_the_file_and_unrelated_ones_are_ignored() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("sockeye.toml", "[websocket]\ncompression_level = 3\n")?;
            jail.set_env("SOCKEYE_WEBSOCKET__COMPRESSION_THRESHOLD", "1 MiB");
            jail.set_env("SOCKEYE_STORE__DURABILITY", "interval");
            jail.set_env("SOCKEYE_BENCH_TOKEN", "not configuration");
            let common = CommonArgs {
                config: Some("sockeye.toml".into()),
                data_dir: None,
            };
            let config = load(&common, vec![("server.listen", "127.0.0.1:9".into())])
                .map_err(|err| format!("{err:#}"))?;
            assert_eq!(config.websocket.compression_threshold.as_u64(), 1 << 20);
            assert_eq!(config.websocket.compression_level, 3);
            assert_eq!(
                config.store.durability,
                sockeye_broker::config::Durability::Interval
            );
            assert_eq!(config.server.listen.to_string(), "127.0.0.1:9");
            Ok(())
        });
    }

    #[test]
    fn a_wrong_key_inside_a_section_is_an_error_even_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SOCKEYE_STORE__DURABILTY", "interval");
            let common = CommonArgs {
                config: None,
                data_dir: None,
            };
            assert!(load(&common, Vec::new()).is_err());
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let result: Result<Config, _> =
            Figment::from(Toml::string("[server]\nlisen = \"0.0.0.0:1\"\n")).extract();
        assert!(result.is_err());
    }
}
