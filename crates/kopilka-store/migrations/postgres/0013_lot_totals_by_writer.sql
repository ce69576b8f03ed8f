-- `member_lot_totals` is written by the engine's writer from now on: one row per member, currency
-- and state for every member whose lots a batch changed, with the absolute totals its ledger
-- decided (`MemberLedger::stored_totals`). The trigger of 0012 ran once per lot row, which the
-- jobs (a row per lot they activate or expire) paid for on every lot.
-- `Store::verify` still compares the table with the lots.
DROP TRIGGER lots_totals ON lots;
DROP FUNCTION lots_totals();
