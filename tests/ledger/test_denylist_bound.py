"""(1.1) The deny-list's bound: PROTOCOL.md "Config and deny-list" lists every blocked card and
every card with a debt, sorted, unique, at most 6000; "if there are more: cards blocked as lost or
stolen first, then the largest debts". Where the contract is silent (the other blocked cards) our
choice, docs/protocol.md: after lost/stolen, before the debts. `sp_issue_denylist` (revision
0013) on real PostgreSQL, with 7,500 candidates inserted in bulk.
"""

from __future__ import annotations

from cloud.ledger import Ledger
from protocol.codec import encode_denylist, verify_denylist
from protocol.keys import generate_private_key
from protocol.limits import DENYLIST_CARDS_MAX
from protocol.models import DenyList
from tests.ledger.helpers import execute, scalar

LOST = 600  # blocked 'lost' (uids L: sort after every other card)
STOLEN = 400  # blocked 'Stolen at the bar' (any case, as the regex says)
BROKEN = 500  # blocked for another reason
INDEBTED = 6000  # active, debt n * 7 cents for n = 1..6000: the uid order is the debt order
CLEAN = 100  # active, no debt: never listed

# Each group's uids: an 8-hex-digit prefix band, then the counter. Lost and stolen sort last, so
# a list cut in uid order (or by recency: they are the oldest) would lose them.
_CARDS_SQL = """
WITH groups (prefix, n_max, status, reason, debt_step, age_days) AS (
    VALUES ('F1', :lost, 'blocked', 'lost', 0, 30),
           ('F2', :stolen, 'blocked', 'Stolen at the bar', 3, 30),
           ('B0', :broken, 'blocked', 'broken wristband', 1, 1),
           ('D0', :indebted, 'active', NULL, 7, 0),
           ('A0', :clean, 'active', NULL, 0, 0)
), cards_wanted AS (
    SELECT g.prefix || lpad(upper(to_hex(n)), 6, '0') AS uid, g.status, g.reason,
           n * g.debt_step AS debt, now() - make_interval(days => g.age_days) AS at
      FROM groups g CROSS JOIN LATERAL generate_series(1, g.n_max) AS n
), new_accounts AS (
    INSERT INTO accounts (kind, name) SELECT 'card', 'card:' || uid FROM cards_wanted
    RETURNING account_id, name
)
INSERT INTO cards (card_uid, account_id, status, blocked_reason, debt_cents, updated_at)
SELECT w.uid, a.account_id, w.status, w.reason, w.debt, w.at
  FROM cards_wanted w JOIN new_accounts a ON a.name = 'card:' || w.uid
"""


def _insert_cards(owner_url: str) -> None:
    execute(
        owner_url,
        _CARDS_SQL,
        lost=LOST,
        stolen=STOLEN,
        broken=BROKEN,
        indebted=INDEBTED,
        clean=CLEAN,
    )


def test_over_6000_candidates_the_lost_and_stolen_then_the_largest_debts_are_kept(
    database_url: str, service_database_url: str, ledger: Ledger
) -> None:
    _insert_cards(database_url)
    candidates = execute(
        database_url,
        "SELECT card_uid::text, status, coalesce(blocked_reason, ''), debt_cents FROM cards"
        " WHERE status <> 'active' OR debt_cents > 0",
    )
    assert len(candidates) == LOST + STOLEN + BROKEN + INDEBTED > DENYLIST_CARDS_MAX

    version = scalar(service_database_url, "SELECT sp_issue_denylist()")
    assert version is not None
    issued = ledger.unpublished_denylist()
    assert issued is not None and issued.version == version
    listed = issued.card_uids

    assert len(listed) == DENYLIST_CARDS_MAX
    assert list(listed) == sorted(set(listed)), "sorted and unique"
    is_lost_or_stolen = {
        uid: status == "blocked" and any(word in reason.lower() for word in ("lost", "stolen"))
        for uid, status, reason, _ in candidates
    }
    debts = {uid: debt for uid, _, _, debt in candidates}
    kept = set(listed)
    lost_or_stolen = {uid for uid, yes in is_lost_or_stolen.items() if yes}
    assert len(lost_or_stolen) == LOST + STOLEN
    assert lost_or_stolen <= kept, "every card blocked as lost or stolen is on the list"
    assert kept <= set(debts), "only blocked cards and cards with a debt"

    # Our choice where PROTOCOL.md is silent: the other blocked cards before the debts.
    broken = {uid for uid, status, _, _ in candidates if status == "blocked"} - lost_or_stolen
    assert broken <= kept
    # The rest is filled by the largest debts: none left out is larger than one kept.
    indebted = {uid for uid, status, _, debt in candidates if status == "active" and debt > 0}
    kept_debts = [debts[uid] for uid in kept & indebted]
    left_out = [debts[uid] for uid in indebted - kept]
    assert len(kept_debts) == DENYLIST_CARDS_MAX - LOST - STOLEN - BROKEN
    assert min(kept_debts) > max(left_out)
    assert sorted(kept_debts) == [
        n * 7 for n in range(INDEBTED - len(kept_debts) + 1, INDEBTED + 1)
    ]

    # Exactly what the protocol carries: the list signs and verifies within the size limit.
    key = generate_private_key()
    document = DenyList(version=version, issued_at_ms=issued.issued_at_ms, card_uids=listed)
    assert verify_denylist(encode_denylist(document, key), cloud_public_key=key.public_key()) == (
        document
    )


def test_up_to_6000_candidates_every_one_is_listed(
    database_url: str, service_database_url: str, ledger: Ledger
) -> None:
    execute(
        database_url,
        _CARDS_SQL,
        lost=10,
        stolen=10,
        broken=10,
        indebted=DENYLIST_CARDS_MAX - 30,
        clean=CLEAN,
    )
    assert scalar(service_database_url, "SELECT sp_issue_denylist()") is not None
    issued = ledger.unpublished_denylist()
    assert issued is not None and len(issued.card_uids) == DENYLIST_CARDS_MAX
    assert not any(uid.startswith("A0") for uid in issued.card_uids), "no clean card"
