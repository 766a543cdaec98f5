//! Loading the configuration: defaults < TOML file < `SOCKEYE_*` environment
//! < command line, then validation.

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use sockeye_broker::Config;

use crate::cli::CommonArgs;

/// The default configuration file, printed by `sockeye config`.
pub(crate) const DEFAULT_CONFIG: &str = include_str!("../config/default.toml");

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
    figment = figment.merge(Env::prefixed("SOCKEYE_").split("__"));
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
    fn unknown_keys_are_rejected() {
        let result: Result<Config, _> =
            Figment::from(Toml::string("[server]\nlisen = \"0.0.0.0:1\"\n")).extract();
        assert!(result.is_err());
    }
}
