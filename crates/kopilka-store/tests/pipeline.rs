//! Statements sent through a `Pipeline` run in the order sent, and what one of them did wrong
//! comes back at the next call, on both stores.

use kopilka_store::pipeline::Pipeline;
use kopilka_store::sql::Builder;
use kopilka_store::testing::test_store;
use kopilka_store::{both_stores, Store, StoreError};

async fn values(conn: &mut sqlx::AnyConnection) -> Vec<(i64, i64)> {
    sqlx::query_as("SELECT id, v FROM piped ORDER BY id").fetch_all(conn).await.unwrap()
}

both_stores! {
    async fn statements_run_in_order_and_their_errors_come_back() {
        let db = test_store().await;
        let store = Store::connect(&db.database).await.unwrap();
        let mut conn = store.writer_connection().await.unwrap();
        sqlx::query("CREATE TABLE piped (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)").execute(&mut conn).await.unwrap();

        // Each statement sees the ones before it: the update finds the rows just inserted, and
        // the last insert comes after the update.
        let mut pipe = Pipeline::new(&mut conn);
        let mut insert = Builder::new("INSERT INTO piped (id, v) ");
        insert.push_values([(1i64, 10i64), (2, 20)], |mut row, (id, v)| {
            row.push_bind(id).push_bind(v);
        });
        pipe.send(insert).await.unwrap();
        let mut update = Builder::new("UPDATE piped SET v = v + ");
        update.push_bind(1i64);
        pipe.send_expecting(update, 2, "piped", "rows to update").await.unwrap();
        let mut insert = Builder::new("INSERT INTO piped (id, v) VALUES (3, ");
        insert.push_bind(30i64).push(")");
        pipe.send(insert).await.unwrap();
        assert_eq!(values(pipe.connection().await.unwrap()).await, vec![(1, 11), (2, 21), (3, 30)]);
        drop(pipe);

        // An update that finds fewer rows than it names fails at the next call.
        let mut pipe = Pipeline::new(&mut conn);
        let mut update = Builder::new("UPDATE piped SET v = 0 WHERE id = ");
        update.push_bind(4i64);
        pipe.send_expecting(update, 1, "piped", "rows to update").await.unwrap();
        let error = pipe.send(Builder::new("DELETE FROM piped WHERE id = 3")).await.expect_err("no row 4");
        assert!(matches!(&error, StoreError::Corrupt { table: "piped", detail } if detail == "0 of 1 rows to update found"), "{error}");
        drop(pipe);

        // A statement the database refuses: its error comes back when the connection is asked
        // for, and the connection goes on working.
        let mut pipe = Pipeline::new(&mut conn);
        pipe.send(Builder::new("INSERT INTO piped (id, v) VALUES (1, 0)")).await.unwrap();
        let error = pipe.connection().await.expect_err("id 1 is taken");
        assert!(matches!(error, StoreError::Database(_)), "{error}");
        drop(pipe);
        assert_eq!(values(&mut conn).await, vec![(1, 11), (2, 21), (3, 30)]);
    }
}
