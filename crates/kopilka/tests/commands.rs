//! The `kopilka` binary itself: first start of `serve`, `program validate`, `keys create`, `jobs run`,
//! `verify`, each run as a user would run it.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

mod support;
use support::Kopilka;

#[test]
fn serve_starts_with_no_configuration_and_prints_an_admin_key_once() {
    let kopilka = Kopilka::new();
    let start = || {
        let mut child = kopilka
            .command()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut printed = Vec::new();
        loop {
            let line = lines.next().expect("serve prints where it listens").unwrap();
            let done = line.contains("listens on");
            printed.push(line);
            if done {
                break;
            }
        }
        (child, printed.join("\n"))
    };
    let (mut first, printed) = start();
    let key = printed.split_whitespace().find(|w| w.starts_with("kpk_")).expect("the admin key is printed").to_string();
    let addr = printed.split("http://").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let answer =
        reqwest::blocking::Client::new().get(format!("http://{addr}/v1/programs/1")).bearer_auth(&key).send().unwrap();
    assert_eq!(answer.status(), 200);
    first.kill().unwrap();
    first.wait().unwrap();

    let (mut second, printed) = start();
    assert!(!printed.contains("kpk_"), "the key is printed only on the first start: {printed}");
    second.kill().unwrap();
    second.wait().unwrap();
}

#[test]
fn program_validate_explains_every_problem_with_its_path() {
    let kopilka = Kopilka::new();
    let good = kopilka.path("good.toml");
    std::fs::write(
        &good,
        r#"
name = "Cafe"
bill_currency = "RUB"
point_currency = "PTS"
point_value_minor = 100
max_redeem_share_percent = 30
pending_days = 0
time_zone = "Europe/Moscow"
earn_rate = { points = 10, per_minor = 10000 }
expiry = { kind = "end_of_following_year" }
"#,
    )
    .unwrap();
    let output = kopilka.command().args(["program", "validate"]).arg(&good).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let bad = kopilka.path("bad.json");
    let mut program: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&good).map(|t| toml_to_json(&t)).unwrap()).unwrap();
    program["max_redeem_share_percent"] = 120.into();
    program["time_zone"] = "Mars/Base".into();
    std::fs::write(&bad, program.to_string()).unwrap();
    let output = kopilka.command().args(["program", "validate"]).arg(&bad).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("max_redeem_share_percent: must be between 0 and 100"), "{stderr}");
    assert!(stderr.contains("time_zone: unknown time zone \"Mars/Base\""), "{stderr}");

    program["earn_rate"]["points"] = "ten".into();
    std::fs::write(&bad, program.to_string()).unwrap();
    let output = kopilka.command().args(["program", "validate"]).arg(&bad).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("earn_rate.points: invalid type"), "{stderr}");

    // A category catalogue turns a misspelt category into an error instead of a rule that never applies.
    let rules = kopilka.path("rules.toml");
    let text = std::fs::read_to_string(&good).unwrap()
        + r#"
categories = ["tires", "oil"]

[[earn_rules]]
id = "winter"
name = "Winter tyres"
condition = { category = ["tyres"] }
effect = { multiplier_percent = 200 }
"#;
    std::fs::write(&rules, text).unwrap();
    let output = kopilka.command().args(["program", "validate"]).arg(&rules).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("earn_rules[0].condition.category: unknown category \"tyres\""), "{stderr}");
}

fn toml_to_json(text: &str) -> String {
    let value: toml::Value = toml::from_str(text).unwrap();
    serde_json::to_string(&value).unwrap()
}

#[test]
fn keys_jobs_and_verify_work_on_a_fresh_store() {
    let kopilka = Kopilka::new();
    let output = kopilka.command().args(["keys", "create", "--role", "pos"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--tenant"), "names the missing flag");
    let output = kopilka.command().args(["keys", "create", "--role", "cashier", "--tenant", "1"]).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a role"));
    let output = kopilka.command().args(["keys", "create", "--role", "pos", "--tenant", "7"]).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("no such tenant"));
    let output = kopilka.command().args(["keys", "create", "--role", "operator"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).trim().starts_with("kpk_"));

    for job in ["expiry", "activate"] {
        let output = kopilka.command().args(["jobs", "run", job]).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let output = kopilka.command().arg("verify").output().unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("the ledger balances"));
}
