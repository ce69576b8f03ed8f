//! `kopilka demo`: a new tenant with members and a year of their shopping, lived day by day.
//!
//! The whole year is planned first from the seed (who signs up when, who shops how often, every
//! basket, which receipts come back), so the same seed makes the same demo. Then the writer runs on
//! a manual clock that walks from a year ago to now one day at a time: each day's members sign up,
//! shop, return and get adjusted, concurrently across members and in order for each member, so
//! points are pending for the return window, become available, are spent, and expire, as they
//! would have in a live system. The only decisions left to the run are the ones that depend on the
//! ledger (how many points a member can spend today); they use fractions drawn in the plan, so
//! they too are the same for a seed.

use kopilka_store::Database;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};
use kopilka_core::member::{Consents, Gender, Profile};
use kopilka_core::purchase::{Channel, LineInput, ReturnLine};
use kopilka_core::{MemberId, MemberLedger, MovementKind, Program, TenantId};
use kopilka_server::app::{self, AppState};
use kopilka_server::auth::generate_key;
use kopilka_server::clock::{Clock, ManualClock, SystemClock};
use kopilka_server::dto::{
    AdjustmentRequest, PurchaseRequest, PurchaseResponse, ReturnRequest, ReturnResponse, TenantCreated,
};
use kopilka_server::engine::{Command, Request};
use kopilka_server::error::ApiError;
use kopilka_server::jobs::{self, Job};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::{run_bounded, DemoArgs};

/// Days of history: a year, and today.
const DAYS: i64 = 365;
/// The largest demo: a million members is a benchmark, not a demo.
const MEMBERS_MAX: usize = 1_000_000;
/// Every this many days the activation and expiry jobs run, as `serve` would run them.
const JOBS_EVERY_DAYS: i64 = 7;
/// Refusals printed in full; the rest are counted.
const REFUSALS_SHOWN_MAX: usize = 10;

pub async fn demo(database: &Database, args: DemoArgs) -> anyhow::Result<()> {
    if args.members == 0 || args.members > MEMBERS_MAX {
        bail!("--members must be between 1 and {MEMBERS_MAX}");
    }
    let started = Instant::now();
    let program = Program::example();
    let tz = TimeZone::get(&program.time_zone).context("the example program's time zone")?;
    let now = SystemClock.now();
    let today = now.to_zoned(tz.clone()).date();
    let first_day = today.checked_sub(DAYS.days())?;
    let plan = Plan::generate(args.seed, args.members, first_day, now, &tz)?;

    let clock = Arc::new(ManualClock::new(day_end(first_day, &tz, now)?));
    let (state, writer_task) = app::open(database, clock.clone()).await?;
    let result = run(&state, &clock, &plan, &args, &tz, first_day, now, started).await;
    drop(state);
    writer_task.await?;
    result
}

#[allow(clippy::too_many_arguments)]
async fn run(
    state: &AppState,
    clock: &Arc<ManualClock>,
    plan: &Plan,
    args: &DemoArgs,
    tz: &TimeZone,
    first_day: Date,
    now: Timestamp,
    started: Instant,
) -> anyhow::Result<()> {
    let name = format!("Demo shop (seed {})", args.seed);
    let command = Command::CreateTenant { name: name.clone(), admin_key: generate_key() };
    let reply = state.writer.submit(Request { tenant: TenantId(0), idempotency: None, command }).await?;
    let created: TenantCreated = serde_json::from_slice(&reply.body)?;
    let tenant = TenantId(created.id);
    println!("Created tenant {} ({name:?}) with the default program.", created.id);
    println!("Its admin API key, shown this once (only its hash is kept):\n\n    {}\n", created.admin_key);
    let (_, _, program) = state.store.program(tenant, None).await?.context("the new tenant has a program")?;
    let program = Arc::new(program);

    let mut member_ids: Vec<Option<MemberId>> = vec![None; plan.members.len()];
    let mut stats = Stats::default();
    for day in 0..=DAYS {
        let date = first_day.checked_add(day.days())?;
        clock.set(day_end(date, tz, now)?);
        let Some(actions) = plan.days.get(&day) else { continue };
        let mut chains: BTreeMap<usize, Vec<&Action>> = BTreeMap::new();
        for (member, action) in actions {
            chains.entry(*member).or_default().push(action);
        }
        let tasks = chains.into_iter().map(|(member, actions)| {
            let chain = Chain {
                state: state.clone(),
                tenant,
                program: program.clone(),
                clock: clock.clone(),
                member_id: member_ids[member],
                profile: plan.members[member].profile.clone(),
                signup_at: plan.members[member].signup_at,
                actions: actions.into_iter().cloned().collect(),
            };
            async move { (member, chain.run().await) }
        });
        for (member, (member_id, chain_stats)) in run_bounded(tasks).await? {
            member_ids[member] = member_id;
            stats.merge(chain_stats?);
        }
        if day % JOBS_EVERY_DAYS == 0 || day == DAYS {
            for job in [Job::Activate, Job::Expiry] {
                jobs::run_once(&state.store, &state.writer, &**clock, job, Some(tenant)).await?;
            }
        }
    }

    let ids: Vec<MemberId> = member_ids.iter().flatten().copied().collect();
    let totals = ledger_totals(state, tenant, &ids, clock.now()).await?;
    let elapsed = started.elapsed().as_secs_f64();
    println!("Tenant {}: {} members, a year of history ({} to {})", tenant.0, ids.len(), first_day, clock.now());
    println!(
        "  purchases {} (with points {}), returns {} ({} whole, {} partial), adjustments {}",
        stats.purchases,
        stats.purchases_with_points,
        stats.returns_whole + stats.returns_partial,
        stats.returns_whole,
        stats.returns_partial,
        stats.adjustments
    );
    println!(
        "  points issued {}, redeemed {}, reversed by returns {}, restored by returns {}, expired {}",
        stats.points_issued, stats.points_redeemed, stats.points_reversed, stats.points_restored, totals.expired
    );
    println!("  balances now: {} available, {} pending", totals.available, totals.pending);
    if !stats.refusals.is_empty() {
        println!("  {} command(s) refused:", stats.refusals.len());
        for refusal in stats.refusals.iter().take(REFUSALS_SHOWN_MAX) {
            println!("    {refusal}");
        }
    }
    let report = state.store.verify().await?;
    println!("  verify: {} movements, {} postings", report.movements, report.postings);
    println!("  elapsed {elapsed:.1} s");
    if !report.problems.is_empty() {
        for problem in &report.problems {
            eprintln!("{problem}");
        }
        bail!("the ledger does not verify: {} problem(s)", report.problems.len());
    }
    if !stats.refusals.is_empty() {
        bail!("{} demo command(s) were refused: the generator or the engine has a bug", stats.refusals.len());
    }
    Ok(())
}

/// The writer's clock for a day: its end, or now on the last day.
fn day_end(date: Date, tz: &TimeZone, now: Timestamp) -> anyhow::Result<Timestamp> {
    let end = date.to_datetime(Time::constant(23, 59, 0, 0)).to_zoned(tz.clone())?.timestamp();
    Ok(end.min(now))
}

// ---------------------------------------------------------------------------------------------
// The plan

/// What one member does on one day.
#[derive(Debug, Clone)]
enum Action {
    SignUp,
    Purchase {
        external_id: String,
        occurred_at: Timestamp,
        channel: Channel,
        store: String,
        lines: Vec<LineInput>,
        /// The share of what the member may spend that pays this bill, if the member pays with points.
        redeem_fraction: Option<f64>,
    },
    Return {
        purchase_external_id: String,
        lines: Option<Vec<ReturnLine>>,
    },
    /// Positive: goodwill points. Negative: the fraction of the available balance taken back.
    Adjust {
        points: i64,
        take_fraction: f64,
        reason: &'static str,
    },
}

struct MemberPlan {
    profile: Profile,
    signup_at: Timestamp,
}

struct Plan {
    members: Vec<MemberPlan>,
    /// Day index → (member index, action), in the order they happen.
    days: BTreeMap<i64, Vec<(usize, Action)>>,
}

/// How often a member shops, per year, and for how long.
#[derive(Clone, Copy)]
enum Habit {
    Loyal,
    Regular,
    Occasional,
    /// Shops regularly, then stops: their points expire.
    Lapsed,
}

impl Habit {
    fn purchases_per_year(&self) -> f64 {
        match self {
            Habit::Loyal => 60.0,
            Habit::Regular => 22.0,
            Habit::Occasional => 6.0,
            Habit::Lapsed => 18.0,
        }
    }
}

impl Plan {
    fn generate(seed: u64, members: usize, first_day: Date, now: Timestamp, tz: &TimeZone) -> anyhow::Result<Plan> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut plan = Plan { members: Vec::with_capacity(members), days: BTreeMap::new() };
        let mut identities = Identities::default();
        let mut receipt_seq = 0u64;
        let at = |date: Date, rng: &mut StdRng| -> anyhow::Result<Timestamp> {
            let time = Time::new(rng.gen_range(9..22), rng.gen_range(0..60), rng.gen_range(0..60), 0)?;
            let ts = date.to_datetime(time).to_zoned(tz.clone())?.timestamp();
            Ok(ts.min(now.checked_sub(SignedDuration::from_mins(1))?))
        };
        for index in 0..members {
            let profile = identities.profile(index, &mut rng);
            // Two thirds were members before the year began; the rest join during it.
            let (join_day, signup_at) = if rng.gen_bool(0.65) {
                let days_before = rng.gen_range(1..=3 * 365);
                let date = first_day.checked_sub((days_before as i64).days())?;
                (0, at(date, &mut rng)?)
            } else {
                let day = rng.gen_range(0..=DAYS);
                (day, at(first_day.checked_add(day.days())?, &mut rng)?)
            };
            plan.push(join_day, index, Action::SignUp);
            let habit =
                *[Habit::Loyal, Habit::Regular, Habit::Regular, Habit::Occasional, Habit::Occasional, Habit::Lapsed]
                    .choose(&mut rng)
                    .expect("not empty");
            let last_day = match habit {
                Habit::Lapsed => rng.gen_range(join_day..=join_day.max(DAYS / 2)),
                _ => DAYS,
            };
            let daily = habit.purchases_per_year() * rng.gen_range(0.6..1.4) / 365.0;
            for day in join_day..=last_day {
                let date = first_day.checked_add(day.days())?;
                let weekend = matches!(date.weekday(), jiff::civil::Weekday::Saturday | jiff::civil::Weekday::Sunday);
                let season = if date.month() == 12 { 1.6 } else { 1.0 };
                let p = (daily * season * if weekend { 1.4 } else { 0.9 }).min(0.9);
                if !rng.gen_bool(p) {
                    continue;
                }
                receipt_seq += 1;
                let external_id = format!("R{seed}-{receipt_seq:07}");
                let lines = basket(&mut rng);
                let occurred_at = at(date, &mut rng)?;
                if day == join_day && occurred_at < signup_at {
                    continue;
                }
                let return_plan = rng.gen_bool(0.04).then(|| {
                    let after = if rng.gen_bool(0.8) { rng.gen_range(1..=13) } else { rng.gen_range(15..=40) };
                    let lines = if rng.gen_bool(0.5) {
                        None
                    } else {
                        let line = rng.gen_range(0..lines.len());
                        Some(vec![ReturnLine { line, quantity: rng.gen_range(1..=lines[line].quantity) }])
                    };
                    (day + after, lines)
                });
                let channel = *[Channel::Pos, Channel::Pos, Channel::Pos, Channel::Pos, Channel::Web, Channel::App]
                    .choose(&mut rng)
                    .expect("not empty");
                let store = match channel {
                    Channel::Pos => STORES.choose(&mut rng).expect("not empty").to_string(),
                    _ => "Интернет-магазин".to_string(),
                };
                let redeem_fraction = rng.gen_bool(0.12).then(|| rng.gen_range(0.3..=1.0));
                plan.push(
                    day,
                    index,
                    Action::Purchase {
                        external_id: external_id.clone(),
                        occurred_at,
                        channel,
                        store,
                        lines,
                        redeem_fraction,
                    },
                );
                if let Some((return_day, lines)) = return_plan {
                    if return_day <= DAYS {
                        plan.push(return_day, index, Action::Return { purchase_external_id: external_id, lines });
                    }
                }
            }
            if rng.gen_bool(0.04) {
                let day = rng.gen_range(join_day..=DAYS);
                let (points, reason) = *[
                    (200, "Компенсация за задержку доставки"),
                    (500, "Бонус ко дню рождения"),
                    (100, "Извинение за ошибку кассира"),
                    (300, "Участие в опросе"),
                ]
                .choose(&mut rng)
                .expect("not empty");
                plan.push(day, index, Action::Adjust { points, take_fraction: 0.0, reason });
            }
            if rng.gen_bool(0.01) {
                let day = rng.gen_range(join_day..=DAYS);
                let take_fraction = rng.gen_range(0.1..0.5);
                plan.push(
                    day,
                    index,
                    Action::Adjust {
                        points: 0, take_fraction, reason: "Исправление двойного начисления"
                    },
                );
            }
            plan.members.push(MemberPlan { profile, signup_at });
        }
        // Within a day a member's actions happen in time order: sign-up first, then receipts.
        for actions in plan.days.values_mut() {
            actions.sort_by_key(|(member, action)| (*member, action.order_key()));
        }
        Ok(plan)
    }

    fn push(&mut self, day: i64, member: usize, action: Action) {
        self.days.entry(day).or_default().push((member, action));
    }
}

impl Action {
    fn order_key(&self) -> (u8, Timestamp) {
        match self {
            Action::SignUp => (0, Timestamp::MIN),
            Action::Purchase { occurred_at, .. } => (1, *occurred_at),
            Action::Return { .. } => (2, Timestamp::MIN),
            Action::Adjust { .. } => (3, Timestamp::MIN),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// People and baskets

const FEMALE: [(&str, &str); 16] = [
    ("Анна", "anna"),
    ("Мария", "maria"),
    ("Елена", "elena"),
    ("Ольга", "olga"),
    ("Наталья", "natalya"),
    ("Татьяна", "tatyana"),
    ("Екатерина", "ekaterina"),
    ("Ирина", "irina"),
    ("Светлана", "svetlana"),
    ("Юлия", "yulia"),
    ("Дарья", "darya"),
    ("Алина", "alina"),
    ("Ксения", "ksenia"),
    ("Виктория", "viktoria"),
    ("Полина", "polina"),
    ("Софья", "sofya"),
];
const MALE: [(&str, &str); 16] = [
    ("Александр", "alexander"),
    ("Дмитрий", "dmitry"),
    ("Сергей", "sergey"),
    ("Андрей", "andrey"),
    ("Алексей", "alexey"),
    ("Максим", "maxim"),
    ("Иван", "ivan"),
    ("Михаил", "mikhail"),
    ("Николай", "nikolay"),
    ("Артём", "artem"),
    ("Евгений", "evgeny"),
    ("Владимир", "vladimir"),
    ("Павел", "pavel"),
    ("Роман", "roman"),
    ("Кирилл", "kirill"),
    ("Егор", "egor"),
];
/// Surnames in their male form, with the female form and the Latin spelling.
const SURNAMES: [(&str, &str, &str); 16] = [
    ("Иванов", "Иванова", "ivanov"),
    ("Смирнов", "Смирнова", "smirnov"),
    ("Кузнецов", "Кузнецова", "kuznetsov"),
    ("Попов", "Попова", "popov"),
    ("Васильев", "Васильева", "vasiliev"),
    ("Петров", "Петрова", "petrov"),
    ("Соколов", "Соколова", "sokolov"),
    ("Михайлов", "Михайлова", "mikhailov"),
    ("Новиков", "Новикова", "novikov"),
    ("Фёдоров", "Фёдорова", "fedorov"),
    ("Морозов", "Морозова", "morozov"),
    ("Волков", "Волкова", "volkov"),
    ("Лебедев", "Лебедева", "lebedev"),
    ("Козлов", "Козлова", "kozlov"),
    ("Никитин", "Никитина", "nikitin"),
    ("Орлов", "Орлова", "orlov"),
];
/// Cities and their weights (roughly by population).
const CITIES: [(&str, u32); 12] = [
    ("Москва", 30),
    ("Санкт-Петербург", 15),
    ("Новосибирск", 6),
    ("Екатеринбург", 6),
    ("Казань", 5),
    ("Нижний Новгород", 5),
    ("Самара", 4),
    ("Ростов-на-Дону", 4),
    ("Краснодар", 4),
    ("Воронеж", 4),
    ("Пермь", 3),
    ("Тверь", 2),
];
const EMAIL_DOMAINS: [&str; 5] = ["mail.ru", "yandex.ru", "gmail.com", "bk.ru", "inbox.ru"];
const STORES: [&str; 6] = [
    "Москва, Тверская 12",
    "Москва, Профсоюзная 56",
    "Санкт-Петербург, Невский 88",
    "Казань, Баумана 20",
    "Екатеринбург, Ленина 41",
    "Новосибирск, Красный 29",
];
/// A small grocery and household catalogue: sku, category, price in kopecks.
const CATALOGUE: [(&str, &str, i64); 30] = [
    ("MLK-1L", "dairy", 89_90),
    ("KEFIR-1L", "dairy", 99_90),
    ("CHEESE-200", "dairy", 279_00),
    ("BUTTER-180", "dairy", 219_90),
    ("YOGURT-4", "dairy", 159_00),
    ("BREAD-RYE", "bakery", 59_90),
    ("BAGUETTE", "bakery", 79_00),
    ("CROISSANT", "bakery", 89_00),
    ("APPLES-1KG", "produce", 149_90),
    ("BANANAS-1KG", "produce", 139_00),
    ("TOMATO-1KG", "produce", 299_00),
    ("POTATO-2KG", "produce", 119_90),
    ("CHICKEN-1KG", "meat", 389_00),
    ("BEEF-500", "meat", 549_00),
    ("SAUSAGE-400", "meat", 329_90),
    ("SALMON-300", "fish", 799_00),
    ("COFFEE-250", "beverages", 549_00),
    ("TEA-100", "beverages", 289_00),
    ("JUICE-1L", "beverages", 149_00),
    ("WATER-6", "beverages", 239_00),
    ("CHOCO-100", "sweets", 119_00),
    ("COOKIES-300", "sweets", 169_90),
    ("PASTA-500", "grocery", 99_90),
    ("RICE-900", "grocery", 149_00),
    ("OIL-1L", "grocery", 189_00),
    ("DETERGENT-3KG", "household", 899_00),
    ("TISSUE-10", "household", 199_00),
    ("SHAMPOO-400", "cosmetics", 449_00),
    ("TOOTHPASTE", "cosmetics", 229_00),
    ("DIAPERS-50", "baby", 1_299_00),
];

/// Hands out unique phones, cards and e-mails.
#[derive(Default)]
struct Identities {
    phones: std::collections::HashSet<String>,
    emails: std::collections::HashSet<String>,
}

impl Identities {
    fn profile(&mut self, index: usize, rng: &mut StdRng) -> Profile {
        let gender = if rng.gen_bool(0.55) { Gender::Female } else { Gender::Male };
        let (first, first_latin) = *match gender {
            Gender::Female => FEMALE.choose(rng),
            _ => MALE.choose(rng),
        }
        .expect("not empty");
        let (male, female, surname_latin) = *SURNAMES.choose(rng).expect("not empty");
        let surname = if gender == Gender::Female { female } else { male };
        let phone = loop {
            let phone = format!("+79{:09}", rng.gen_range(0..1_000_000_000u64));
            if self.phones.insert(phone.clone()) {
                break phone;
            }
        };
        let email = rng.gen_bool(0.8).then(|| loop {
            let email = format!(
                "{first_latin}.{surname_latin}{}@{}",
                rng.gen_range(1..1000),
                EMAIL_DOMAINS.choose(rng).expect("not empty")
            );
            if self.emails.insert(email.clone()) {
                break email;
            }
        });
        let total_weight: u32 = CITIES.iter().map(|(_, w)| w).sum();
        let mut pick = rng.gen_range(0..total_weight);
        let city = CITIES
            .iter()
            .find(|(_, weight)| {
                if pick < *weight {
                    return true;
                }
                pick -= weight;
                false
            })
            .map(|(city, _)| city.to_string());
        let birth_date = rng.gen_bool(0.85).then(|| {
            let year = rng.gen_range(1950..=2006);
            Date::new(year, rng.gen_range(1..=12), rng.gen_range(1..=28)).expect("valid date")
        });
        let stated_gender = rng.gen_bool(0.9).then_some(gender);
        Profile {
            card: Some(format!("7700{:08}", 10_000_000 + index as u64)),
            phone: Some(phone),
            email: email.clone(),
            external_id: rng.gen_bool(0.7).then(|| format!("CRM-{:06}", index + 1)),
            name: Some(format!("{first} {surname}")),
            birth_date,
            gender: stated_gender,
            city,
            consents: Consents {
                email: email.is_some() && rng.gen_bool(0.6),
                sms: rng.gen_bool(0.5),
                push: rng.gen_bool(0.3),
                messenger: rng.gen_bool(0.25),
            },
            time_zone: None,
            language: None,
        }
    }
}

fn basket(rng: &mut StdRng) -> Vec<LineInput> {
    let count = 1 + (rng.gen::<f64>().powi(2) * 9.0) as usize;
    CATALOGUE
        .choose_multiple(rng, count)
        .map(|(sku, category, price)| {
            let quantity = match rng.gen_range(0..10) {
                0..=6 => 1,
                7 | 8 => 2,
                _ => rng.gen_range(3..=6),
            };
            let discount_minor = if rng.gen_bool(0.15) { price * quantity * rng.gen_range(10..=30) / 100 } else { 0 };
            LineInput {
                sku: sku.to_string(),
                category: Some(category.to_string()),
                brand: None,
                quantity,
                unit_price_minor: *price,
                discount_minor,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Running a member's day

#[derive(Default)]
struct Stats {
    purchases: u64,
    purchases_with_points: u64,
    returns_whole: u64,
    returns_partial: u64,
    adjustments: u64,
    points_issued: i64,
    points_redeemed: i64,
    points_reversed: i64,
    points_restored: i64,
    refusals: Vec<String>,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.purchases += other.purchases;
        self.purchases_with_points += other.purchases_with_points;
        self.returns_whole += other.returns_whole;
        self.returns_partial += other.returns_partial;
        self.adjustments += other.adjustments;
        self.points_issued += other.points_issued;
        self.points_redeemed += other.points_redeemed;
        self.points_reversed += other.points_reversed;
        self.points_restored += other.points_restored;
        self.refusals.extend(other.refusals);
    }
}

/// One member's actions of one day, run in order.
struct Chain {
    state: AppState,
    tenant: TenantId,
    program: Arc<Program>,
    clock: Arc<ManualClock>,
    member_id: Option<MemberId>,
    profile: Profile,
    signup_at: Timestamp,
    actions: Vec<Action>,
}

impl Chain {
    async fn run(mut self) -> (Option<MemberId>, anyhow::Result<Stats>) {
        let result = self.run_actions().await;
        (self.member_id, result)
    }

    async fn submit(&self, command: Command) -> Result<Vec<u8>, ApiError> {
        let request = Request { tenant: self.tenant, idempotency: None, command };
        self.state.writer.submit(request).await.map(|reply| reply.body)
    }

    /// Points the member may spend now, from the committed lots (no other command for this member
    /// is in flight: a member's actions run one after another).
    async fn available(&self, member: MemberId) -> anyhow::Result<i64> {
        let lots = self.state.store.lots(self.tenant, member, false).await?;
        let ledger = MemberLedger::new(member, lots);
        Ok(ledger.balance(&self.program.point_currency, self.clock.now()).available)
    }

    async fn run_actions(&mut self) -> anyhow::Result<Stats> {
        let mut stats = Stats::default();
        for action in std::mem::take(&mut self.actions) {
            let outcome = self.run_action(&action, &mut stats).await?;
            if let Err(error) = outcome {
                stats.refusals.push(format!("{action:?}: {error}"));
            }
        }
        Ok(stats)
    }

    async fn run_action(&mut self, action: &Action, stats: &mut Stats) -> anyhow::Result<Result<(), ApiError>> {
        if let Action::SignUp = action {
            let command = Command::CreateMember { profile: self.profile.clone(), signup_at: Some(self.signup_at) };
            let body = match self.submit(command).await {
                Ok(body) => body,
                Err(error) => return Ok(Err(error)),
            };
            // MemberView is Serialize only; the id is all the demo needs.
            let view: serde_json::Value = serde_json::from_slice(&body)?;
            let id = view["id"].as_i64().context("a created member has an id")?;
            self.member_id = Some(MemberId(id));
            return Ok(Ok(()));
        }
        let Some(member) = self.member_id else { bail!("{action:?} before the member signed up") };
        let command = match action {
            Action::SignUp => unreachable!("handled above"),
            Action::Purchase { external_id, occurred_at, channel, store, lines, redeem_fraction } => {
                let mut redeem_points = 0;
                if let Some(fraction) = redeem_fraction {
                    let total: i64 = lines.iter().map(|l| l.unit_price_minor * l.quantity - l.discount_minor).sum();
                    let cap = self.program.max_redeemable_points(total);
                    let spendable = self.available(member).await?.min(cap);
                    let points = (spendable as f64 * fraction) as i64;
                    if points >= 10 {
                        redeem_points = points;
                    }
                }
                Command::Purchase(PurchaseRequest {
                    member_id: member.0,
                    external_id: external_id.clone(),
                    occurred_at: Some(*occurred_at),
                    channel: *channel,
                    store: Some(store.clone()),
                    currency: self.program.bill_currency.to_string(),
                    lines: lines.clone(),
                    redeem_points,
                    program_id: None,
                    explain: false,
                })
            }
            Action::Return { purchase_external_id, lines } => Command::Return(ReturnRequest {
                purchase_id: None,
                purchase_external_id: Some(purchase_external_id.clone()),
                lines: lines.clone(),
            }),
            Action::Adjust { points, take_fraction, reason } => {
                let points = if *points > 0 {
                    *points
                } else {
                    let take = (self.available(member).await? as f64 * take_fraction) as i64;
                    if take == 0 {
                        return Ok(Ok(()));
                    }
                    -take
                };
                Command::Adjust(AdjustmentRequest {
                    member_id: member.0,
                    points,
                    reason: reason.to_string(),
                    program_id: None,
                })
            }
        };
        let body = match self.submit(command).await {
            Ok(body) => body,
            Err(error) => return Ok(Err(error)),
        };
        match action {
            Action::Purchase { .. } => {
                let response: PurchaseResponse = serde_json::from_slice(&body)?;
                stats.purchases += 1;
                stats.purchases_with_points += (response.purchase.points_redeemed > 0) as u64;
                stats.points_issued += response.purchase.points_earned;
                stats.points_redeemed += response.purchase.points_redeemed;
            }
            Action::Return { lines, .. } => {
                let response: ReturnResponse = serde_json::from_slice(&body)?;
                match lines {
                    None => stats.returns_whole += 1,
                    Some(_) => stats.returns_partial += 1,
                }
                stats.points_reversed += response.points_reversed - response.points_unrecovered;
                stats.points_restored += response.points_restored;
            }
            Action::Adjust { .. } => stats.adjustments += 1,
            Action::SignUp => {}
        }
        Ok(Ok(()))
    }
}

/// Balances and expired points of the demo's members at the end.
#[derive(Default)]
struct Totals {
    available: i64,
    pending: i64,
    expired: i64,
}

async fn ledger_totals(
    state: &AppState,
    tenant: TenantId,
    members: &[MemberId],
    now: Timestamp,
) -> anyhow::Result<Totals> {
    let program = Program::example();
    let tasks = members.iter().map(|member| {
        let store = state.store.clone();
        let (member, currency) = (*member, program.point_currency.clone());
        async move {
            let lots = store.lots(tenant, member, false).await?;
            let balance = MemberLedger::new(member, lots).balance(&currency, now);
            let history = store.history(tenant, &[member], None, i64::MAX).await?;
            let expired: i64 =
                history.iter().filter(|m| m.kind == MovementKind::Expire).map(|m| -m.member_delta()).sum();
            anyhow::Ok((balance, expired))
        }
    });
    let mut totals = Totals::default();
    for result in run_bounded(tasks).await? {
        let (balance, expired) = result?;
        totals.available += balance.available;
        totals.pending += balance.pending;
        totals.expired += expired;
    }
    Ok(totals)
}
