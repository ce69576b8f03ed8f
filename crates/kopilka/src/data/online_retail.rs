//! `kopilka import --format online-retail`: the UCI Online Retail file (placeholder).

use std::path::Path;

use super::ImportArgs;

pub async fn import(_data_dir: &Path, _args: &ImportArgs) -> anyhow::Result<()> {
    anyhow::bail!("--format online-retail is not written yet")
}
