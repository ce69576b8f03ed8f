//! Statements sent through a `Pipeline` run in the order sent, and what one of them did wrong
//! comes back at the next call, on both stores; the padded `VALUES` lists the writer's statements
//! are built with write and find exactly their own rows.

use kopilka_store::pipeline::Pipeline;
use kopilka_store::sql::{Backend, Builder};
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

async fn padded_rows_of(conn: &mut sqlx::AnyConnection) -> Vec<(i64, i64, Option<String>, Option<i64>)> {
    sqlx::query_as("SELECT tenant_id, id, name, n FROM padded ORDER BY tenant_id, id").fetch_all(conn).await.unwrap()
}

both_stores! {
    async fn padded_values_write_and_find_only_their_own_rows() {
        let db = test_store().await;
        let store = Store::connect(&db.database).await.unwrap();
        let mut conn = store.writer_connection().await.unwrap();
        sqlx::query(
            "CREATE TABLE padded (tenant_id BIGINT NOT NULL, id BIGINT NOT NULL, name TEXT, n BIGINT,
             PRIMARY KEY (tenant_id, id))",
        )
        .execute(&mut conn)
        .await
        .unwrap();

        // Five rows, padded to six with NULLs typed as the first row's (whose name and number are
        // NULL themselves): the padding row is left out, the NULLs of real rows are kept.
        let rows: Vec<(i64, i64, Option<String>, Option<i64>)> = vec![
            (1, 1, None, None),
            (1, 2, Some("b".into()), Some(20)),
            (1, 3, Some("c".into()), None),
            (2, 1, None, Some(40)),
            (2, 2, Some("e".into()), Some(50)),
        ];
        let mut insert = Builder::new("INSERT INTO padded (tenant_id, id, name, n) ");
        insert.push_rows(&rows, |mut b, (tenant, id, name, n)| {
            b.push_bind(*tenant).push_bind(*id).push_bind(name.clone()).push_bind(*n);
        });
        let text = insert.sql(Backend::of(&conn)).into_owned();
        assert_eq!(text.matches("), (").count() + 1, 6, "five rows and one of padding: {text}");
        let mut pipe = Pipeline::new(&mut conn);
        pipe.send(insert).await.unwrap();
        pipe.connection().await.unwrap();
        drop(pipe);
        assert_eq!(padded_rows_of(&mut conn).await, rows);

        // An upsert of three rows (padded to three: nothing to leave out), one of them there.
        let mut upsert = Builder::new("INSERT INTO padded (tenant_id, id, name, n) ");
        upsert.push_rows([(1i64, 2i64, "B", 21i64), (3, 1, "f", 60), (3, 2, "g", 70)], |mut b, (t, id, name, n)| {
            b.push_bind(t).push_bind(id).push_bind(name).push_bind(n);
        });
        upsert.push(" ON CONFLICT (tenant_id, id) DO UPDATE SET name = excluded.name, n = excluded.n");
        let mut pipe = Pipeline::new(&mut conn);
        pipe.send(upsert).await.unwrap();
        pipe.connection().await.unwrap();
        drop(pipe);
        let stored = padded_rows_of(&mut conn).await;
        assert_eq!(stored.len(), 7);
        assert!(stored.contains(&(1, 2, Some("B".into()), Some(21))));
        assert!(stored.contains(&(3, 2, Some("g".into()), Some(70))));

        // Keys joined by equality, padded from five to six: a row of NULLs finds nothing, not even
        // the rows whose name is NULL; a key nobody has finds nothing; an update finds its rows.
        let keys = [(1i64, "B"), (1, "c"), (2, "e"), (1, "nobody"), (3, "f")];
        let mut find = Builder::new("WITH k(t, v) AS (");
        find.push_keys(keys, |mut b, (t, v)| {
            b.push_bind(t).push_bind(v);
        });
        find.push(") SELECT padded.id FROM k JOIN padded ON padded.tenant_id = k.t AND padded.name = k.v ORDER BY padded.tenant_id, padded.id");
        let found: Vec<i64> = find.fetch_all_scalar(&mut conn).await.unwrap();
        assert_eq!(found, vec![2, 3, 2, 1]);
        let mut update = Builder::new("WITH k(t, v, x) AS (");
        update.push_keys([(1i64, 1i64, 11i64), (2, 1, 41), (9, 9, 99)], |mut b, (t, v, x)| {
            b.push_bind(t).push_bind(v).push_bind(x);
        });
        update.push(") UPDATE padded SET n = k.x FROM k WHERE padded.tenant_id = k.t AND padded.id = k.v");
        let mut pipe = Pipeline::new(&mut conn);
        pipe.send_expecting(update, 2, "padded", "rows to update").await.unwrap();
        pipe.connection().await.unwrap();
        drop(pipe);
        let stored = padded_rows_of(&mut conn).await;
        assert!(stored.contains(&(1, 1, None, Some(11))) && stored.contains(&(2, 1, None, Some(41))));
        assert_eq!(stored.len(), 7);
    }
}
