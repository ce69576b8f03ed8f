//! `kopilka bench` (being written: see the issue notes).

use clap::Args;

#[derive(Args)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("bench is not written yet")
}
