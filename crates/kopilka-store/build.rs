//! Rebuilds the store when a migration is added: `sqlx::migrate!` embeds the directory at compile
//! time, and cargo would not otherwise notice a new file in it.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
