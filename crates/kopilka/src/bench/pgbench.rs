//! The PostgreSQL anchor: `pgbench`'s tpcb-like transactions (one account update, one history
//! insert, like a points accrual) on a scratch database of the local server, 127.0.0.1:5432, user
//! `postgres`. The database is created for the run and dropped after it.

use std::process::{Command, Output};

/// What pgbench measured.
#[derive(Debug, Clone)]
pub struct PgBench {
    pub tps: f64,
    pub clients: usize,
    pub seconds: u64,
    pub scale: usize,
}

const HOST: [&str; 6] = ["-h", "127.0.0.1", "-p", "5432", "-U", "postgres"];

fn run(program: &str, args: &[&str]) -> Result<Output, String> {
    let output = Command::new(program).args(args).output().map_err(|e| format!("{program} is not available: {e}"))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(format!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

/// Runs `pgbench -i -s SCALE` and `pgbench -b tpcb-like -c CLIENTS -j 2 -T SECONDS`; `Err` says why
/// it was skipped (no pgbench, no server) or what failed.
pub fn measure(clients: usize, seconds: u64) -> Result<PgBench, String> {
    run("pgbench", &["--version"])?;
    run("pg_isready", &HOST[..4]).map_err(|e| format!("no PostgreSQL on 127.0.0.1:5432 ({e})"))?;
    let database = format!("kopilka_bench_{}", std::process::id());
    run("createdb", &[&HOST[..], &[database.as_str()]].concat())?;
    // Scale ≥ clients, as pgbench advises: otherwise the clients queue on the few branch rows.
    let scale = clients.max(1);
    let result = (|| {
        let scale_arg = scale.to_string();
        run("pgbench", &[&HOST[..], &["-i", "-q", "-s", &scale_arg, &database]].concat())?;
        let (c, t) = (clients.to_string(), seconds.to_string());
        let output =
            run("pgbench", &[&HOST[..], &["-b", "tpcb-like", "-c", &c, "-j", "2", "-T", &t, &database]].concat())?;
        let text = String::from_utf8_lossy(&output.stdout);
        parse_tps(&text).ok_or_else(|| format!("no tps in pgbench's output: {text}"))
    })();
    let dropped = run("dropdb", &[&HOST[..], &[database.as_str()]].concat());
    let tps = result?;
    dropped?;
    Ok(PgBench { tps, clients, seconds, scale })
}

/// The `tps = 1234.5 (without initial connection time)` line; older versions print two lines,
/// `including` and `excluding connections establishing`: the latter is taken.
fn parse_tps(text: &str) -> Option<f64> {
    let lines: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with("tps = ")).collect();
    let line = lines.iter().find(|l| l.contains("without") || l.contains("excluding")).or(lines.first())?;
    line.trim_start().strip_prefix("tps = ")?.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_tps;

    #[test]
    fn reads_the_tps_of_either_pgbench_version() {
        let new = "latency average = 9.1 ms\ninitial connection time = 4.2 ms\ntps = 1754.321 (without initial connection time)\n";
        assert_eq!(parse_tps(new), Some(1754.321));
        let old =
            "tps = 900.5 (including connections establishing)\ntps = 910.25 (excluding connections establishing)\n";
        assert_eq!(parse_tps(old), Some(910.25));
        assert_eq!(parse_tps("no figures"), None);
    }
}
