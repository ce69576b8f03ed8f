-- The twin of SQLite's 0012: lots due by a moment as index ranges, and members' open-lot totals
-- kept by a trigger (see there for why).
DROP INDEX lots_member;
CREATE INDEX lots_member ON lots (tenant_id, member_id, state,
    (CASE state WHEN 'pending' THEN LEAST(available_from, expires_at) ELSE expires_at END));

CREATE TABLE member_lot_totals (
    tenant_id BIGINT NOT NULL,
    member_id BIGINT NOT NULL,
    currency TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'available')),
    remaining BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, member_id, currency, state)
);

INSERT INTO member_lot_totals (tenant_id, member_id, currency, state, remaining)
SELECT tenant_id, member_id, currency, state, SUM(remaining) FROM lots
WHERE state IN ('pending', 'available') GROUP BY tenant_id, member_id, currency, state;

CREATE FUNCTION lots_totals() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.state IN ('pending', 'available') THEN
        UPDATE member_lot_totals SET remaining = remaining - OLD.remaining
        WHERE tenant_id = OLD.tenant_id AND member_id = OLD.member_id AND currency = OLD.currency AND state = OLD.state;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.state IN ('pending', 'available') THEN
        INSERT INTO member_lot_totals (tenant_id, member_id, currency, state, remaining)
        VALUES (NEW.tenant_id, NEW.member_id, NEW.currency, NEW.state, NEW.remaining)
        ON CONFLICT (tenant_id, member_id, currency, state)
        DO UPDATE SET remaining = member_lot_totals.remaining + excluded.remaining;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER lots_totals AFTER INSERT OR UPDATE OR DELETE ON lots FOR EACH ROW EXECUTE FUNCTION lots_totals();
