-- Every table is keyed by tenant first, so the schema can be distributed by tenant (and member)
-- without changing a primary key. Times are microseconds since the Unix epoch, UTC.

CREATE TABLE tenants (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- Only the SHA-256 of a key is kept. tenant_id is NULL for deployment operators.
CREATE TABLE api_keys (
    key_hash BLOB PRIMARY KEY,
    tenant_id INTEGER REFERENCES tenants(id),
    role TEXT NOT NULL CHECK (role IN ('operator', 'admin', 'pos', 'analyst', 'partner')),
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
) WITHOUT ROWID;

-- The current version of each program; every version is kept in program_versions.
CREATE TABLE programs (
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    id INTEGER NOT NULL,
    version INTEGER NOT NULL,
    document TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
) WITHOUT ROWID;

CREATE TABLE program_versions (
    tenant_id INTEGER NOT NULL,
    program_id INTEGER NOT NULL,
    version INTEGER NOT NULL,
    document TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, program_id, version)
) WITHOUT ROWID;

CREATE TABLE members (
    tenant_id INTEGER NOT NULL,
    id INTEGER NOT NULL,
    card TEXT,
    phone TEXT,
    email TEXT,
    external_id TEXT,
    name TEXT,
    birth_date TEXT,
    gender TEXT,
    city TEXT,
    consents TEXT NOT NULL,
    signup_at INTEGER NOT NULL,
    merged_into INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX members_card ON members (tenant_id, card) WHERE card IS NOT NULL;
CREATE UNIQUE INDEX members_phone ON members (tenant_id, phone) WHERE phone IS NOT NULL;
CREATE UNIQUE INDEX members_email ON members (tenant_id, email) WHERE email IS NOT NULL;
CREATE UNIQUE INDEX members_external_id ON members (tenant_id, external_id) WHERE external_id IS NOT NULL;

CREATE TABLE lots (
    tenant_id INTEGER NOT NULL,
    id INTEGER NOT NULL,
    member_id INTEGER NOT NULL,
    currency TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0),
    remaining INTEGER NOT NULL CHECK (remaining >= 0 AND remaining <= amount),
    available_from INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'available', 'expired', 'closed')),
    movement_id INTEGER NOT NULL,
    purchase_id INTEGER,
    PRIMARY KEY (tenant_id, id)
) WITHOUT ROWID;
CREATE INDEX lots_member ON lots (tenant_id, member_id, state);
CREATE INDEX lots_pending_due ON lots (available_from) WHERE state = 'pending';
CREATE INDEX lots_expiry_due ON lots (expires_at) WHERE state IN ('pending', 'available');

CREATE TABLE movements (
    tenant_id INTEGER NOT NULL,
    id INTEGER NOT NULL,
    member_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    currency TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    purchase_id INTEGER,
    reason TEXT,
    PRIMARY KEY (tenant_id, id)
) WITHOUT ROWID;
CREATE INDEX movements_member ON movements (tenant_id, member_id, id);

CREATE TABLE postings (
    tenant_id INTEGER NOT NULL,
    movement_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    account TEXT NOT NULL,
    member_id INTEGER,
    currency TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount <> 0),
    lot_id INTEGER,
    PRIMARY KEY (tenant_id, movement_id, seq)
) WITHOUT ROWID;

CREATE TABLE purchases (
    tenant_id INTEGER NOT NULL,
    id INTEGER NOT NULL,
    member_id INTEGER NOT NULL,
    external_id TEXT NOT NULL,
    program_id INTEGER NOT NULL,
    occurred_at INTEGER NOT NULL,
    total_minor INTEGER NOT NULL,
    points_earned INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id)
); -- a rowid table: a record is a kilobyte, too large to keep in the key's b-tree
CREATE UNIQUE INDEX purchases_external_id ON purchases (tenant_id, external_id);
CREATE INDEX purchases_member ON purchases (tenant_id, member_id, occurred_at);

-- The outbox: every domain event, written in the transaction of the change it describes.
CREATE TABLE events (
    tenant_id INTEGER NOT NULL,
    id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    member_id INTEGER,
    payload TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
) WITHOUT ROWID;

-- The first answer to every mutating request, returned byte for byte on a retry. member_id names the
-- member whose personal data the answer holds, so erasing the member erases the answer too. A rowid
-- table: keys arrive in random order and answers are a kilobyte, so rows are appended in arrival
-- order and only the small unique index takes random inserts.
CREATE TABLE idempotency (
    tenant_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    request_hash BLOB NOT NULL,
    status INTEGER NOT NULL,
    body BLOB NOT NULL,
    member_id INTEGER,
    created_at INTEGER NOT NULL,
    UNIQUE (tenant_id, key)
);
CREATE INDEX idempotency_member ON idempotency (tenant_id, member_id) WHERE member_id IS NOT NULL;

-- The last id handed out, per kind. A writer reads these under the write lock at the start of a
-- batch and stores what it used before committing, so two writers on one file (a server and an
-- import) never hand out the same id. (MAX(id) would scan: ids are the second column of each key.)
CREATE TABLE sequences (
    name TEXT PRIMARY KEY,
    last INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO sequences (name, last) VALUES ('lot', 0), ('movement', 0), ('purchase', 0), ('member', 0), ('event', 0);
