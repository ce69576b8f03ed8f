-- Loading a member light (a purchase that redeems nothing: `batch::load_light_members`) needs the
-- lots due now and the totals of the rest. Both used to read every open lot of the member, a
-- cost that grew with the member's history (a daily customer has hundreds of lots).

-- The lots due by a moment are one index range per state: a lot is due when its stored state
-- changes, at its expiry, or (pending) at its availability if that is earlier.
DROP INDEX lots_member;
CREATE INDEX lots_member ON lots (tenant_id, member_id, state,
    (CASE state WHEN 'pending' THEN min(available_from, expires_at) ELSE expires_at END));

-- The remaining points of a member's open lots by currency and stored state, kept by triggers on
-- `lots` whatever writes them, so a light load reads one row instead of summing every lot.
-- Derived: `Store::verify` compares it with the lots, and `migrate-store` does not copy it (the
-- triggers on the target rebuild it from the copied lots).
CREATE TABLE member_lot_totals (
    tenant_id INTEGER NOT NULL,
    member_id INTEGER NOT NULL,
    currency TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'available')),
    remaining INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, member_id, currency, state)
) WITHOUT ROWID;

INSERT INTO member_lot_totals (tenant_id, member_id, currency, state, remaining)
SELECT tenant_id, member_id, currency, state, SUM(remaining) FROM lots
WHERE state IN ('pending', 'available') GROUP BY tenant_id, member_id, currency, state;

CREATE TRIGGER lots_totals_insert AFTER INSERT ON lots WHEN NEW.state IN ('pending', 'available') BEGIN
    INSERT INTO member_lot_totals (tenant_id, member_id, currency, state, remaining)
    VALUES (NEW.tenant_id, NEW.member_id, NEW.currency, NEW.state, NEW.remaining)
    ON CONFLICT (tenant_id, member_id, currency, state) DO UPDATE SET remaining = remaining + excluded.remaining;
END;

CREATE TRIGGER lots_totals_update_old AFTER UPDATE ON lots WHEN OLD.state IN ('pending', 'available') BEGIN
    UPDATE member_lot_totals SET remaining = remaining - OLD.remaining
    WHERE tenant_id = OLD.tenant_id AND member_id = OLD.member_id AND currency = OLD.currency AND state = OLD.state;
END;

CREATE TRIGGER lots_totals_update_new AFTER UPDATE ON lots WHEN NEW.state IN ('pending', 'available') BEGIN
    INSERT INTO member_lot_totals (tenant_id, member_id, currency, state, remaining)
    VALUES (NEW.tenant_id, NEW.member_id, NEW.currency, NEW.state, NEW.remaining)
    ON CONFLICT (tenant_id, member_id, currency, state) DO UPDATE SET remaining = remaining + excluded.remaining;
END;

CREATE TRIGGER lots_totals_delete AFTER DELETE ON lots WHEN OLD.state IN ('pending', 'available') BEGIN
    UPDATE member_lot_totals SET remaining = remaining - OLD.remaining
    WHERE tenant_id = OLD.tenant_id AND member_id = OLD.member_id AND currency = OLD.currency AND state = OLD.state;
END;
