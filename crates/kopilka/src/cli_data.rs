//! The data commands: demo, import, export. (Being written: see the issue notes.)

use std::path::{Path, PathBuf};

use clap::Args;

#[derive(Args)]
pub struct DemoArgs {
    /// How many members the demo tenant gets.
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// Seed of the generator: the same seed makes the same demo.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

#[derive(Args)]
pub struct ImportArgs {
    pub kind: String,
    pub file: PathBuf,
    #[arg(long)]
    pub tenant: i64,
}

#[derive(Args)]
pub struct ExportArgs {
    pub kind: String,
    #[arg(long)]
    pub tenant: i64,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub async fn demo(_data_dir: &Path, _args: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("demo is not written yet")
}

pub async fn import(_data_dir: &Path, _args: ImportArgs) -> anyhow::Result<()> {
    anyhow::bail!("import is not written yet")
}

pub async fn export(_data_dir: &Path, _args: ExportArgs) -> anyhow::Result<()> {
    anyhow::bail!("export is not written yet")
}
