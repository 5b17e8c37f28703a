"""The cloud's configuration: environment variables of DESIGN.md, validated once at start.

Each process builds one `CloudSettings` in its composition root and passes it down. Fields a
command does not need may be absent; `require()` names what is missing in one clear error.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cloud.keys import load_card_master_key
from protocol.limits import (
    BALANCE_CENTS_MAX_DEFAULT,
    FUTURE_SKEW_S_DEFAULT,
    MENU_GRACE_S_DEFAULT,
    ORDER_TOTAL_CENTS_MAX,
    RETURN_CENTS_MAX_DEFAULT,
    STALE_AFTER_S_DEFAULT,
    TOPUP_CENTS_MAX_DEFAULT,
    VOID_WINDOW_S_DEFAULT,
)
from protocol.models import OfflinePolicy
from protocol.mqtt_url import MqttEndpoint, parse_mqtt_url
from protocol.redaction import redact

PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "password", "xxx", "todo"}


class SettingsError(ValueError):
    """Configuration is missing or invalid; the message names the variable."""


def normalise_database_url(url: str) -> str:
    """Accept `postgresql://` as DESIGN.md promises; SQLAlchemy wants a driver name."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def _check_database_url(url: str) -> None:
    """Refuse a malformed DATABASE_URL here, with a clear message and the password hidden
    (SQLAlchemy would fail later with a traceback)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number 0..65535
    except ValueError:
        parts = None
    if parts is None or not parts.scheme or "://" not in url:
        raise ValueError(
            f"DATABASE_URL {redact(url)!r} is not a URL such as"
            " postgresql://festival@db.internal:5432/festival"
            " (percent-encode / # ? @ : in the user or password)"
        )


class CloudSettings(BaseSettings):
    # hide_input_in_errors: pydantic would quote the raw value (a URL with its password).
    model_config = SettingsConfigDict(
        extra="forbid", case_sensitive=False, frozen=True, hide_input_in_errors=True
    )

    database_url: str | None = None
    mqtt_url: SecretStr | None = None
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    # The broker's control identity (0600 JSON written by `festival-cloud broker config`): lets
    # `kiosk add|password|disable` change the broker at once. Only the operator's CLI needs it.
    mqtt_admin_file: Path | None = None
    festival_topic_prefix: str = Field(default="festival", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    festival_currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    cloud_signing_key_file: Path | None = None
    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    stripe_api_base: str | None = None
    admin_token: SecretStr | None = None
    # Revision 1.1: grants nothing (each POS device has its own token, `pos add`); still accepted
    # so an old environment file does not stop the API, which warns once that it is ignored.
    pos_api_token: SecretStr | None = None
    # Revision 1.1: bearer token for /metrics from other hosts than loopback (unset: loopback only).
    metrics_token: SecretStr | None = None
    consumer_id: str = Field(default_factory=lambda: f"consumer-{socket.gethostname()}"[:64])
    festival_max_balance_cents: int = Field(default=BALANCE_CENTS_MAX_DEFAULT, ge=1, le=10**11)
    festival_max_topup_cents: int = Field(default=TOPUP_CENTS_MAX_DEFAULT, ge=1, le=10**11)
    # (1.1) The most the return lines of one bar order may add up to; 0 refuses every return.
    festival_return_max_cents: int = Field(
        default=RETURN_CENTS_MAX_DEFAULT, ge=0, le=ORDER_TOTAL_CENTS_MAX
    )
    # (1.1) What a payout keeps for the festival (DESIGN.md payout rules): taken after the
    # donation, never more than what is left of the balance; 0 = no fee.
    festival_payout_fee_cents: int = Field(default=0, ge=0, le=10**11)
    # (1.1) The default offline policy put in every kiosk's config at `kiosk add` (PROTOCOL.md
    # "Offline sales"); a sale maximum of 0 means no offline sales (the config's `offline` is null).
    festival_offline_sale_max_cents: int = Field(default=2000, ge=0, le=ORDER_TOTAL_CENTS_MAX)
    festival_offline_card_max_cents: int = Field(default=4000, ge=1, le=10**11)
    festival_offline_kiosk_max_cents: int = Field(default=50000, ge=1, le=10**11)
    # (1.1) How long after a config is superseded an order priced from it is still accepted.
    festival_menu_grace_s: int = Field(default=MENU_GRACE_S_DEFAULT, ge=0, le=10**6)
    # (1.1) How long after an order's created_at_ms its kiosk may void it (PROTOCOL.md `void`).
    festival_void_window_s: int = Field(default=VOID_WINDOW_S_DEFAULT, ge=0, le=10**6)
    # (1.1) Staff roles enforced (DESIGN.md `staff`): every kiosk request must name a staff
    # member logged in at that kiosk whose role allows it, else STAFF_NOT_ALLOWED.
    festival_staff_required: bool = False
    festival_stale_after_s: int = Field(default=STALE_AFTER_S_DEFAULT, ge=1, le=10**9)
    festival_future_skew_s: int = Field(default=FUTURE_SKEW_S_DEFAULT, ge=0, le=10**6)
    consumer_metrics_port: int = Field(default=9108, ge=0, le=65535)
    # festival-consumer@N.service sets it to N: each instance on one host gets its own port
    # (CONSUMER_METRICS_PORT + N); see `metrics_port`.
    consumer_metrics_port_offset: int = Field(default=0, ge=0, le=1000)
    # Loopback by default: the consumer's figures are for a local Prometheus or a tunnel.
    consumer_metrics_host: str = "127.0.0.1"
    consumer_batch_max: int = Field(default=64, ge=1, le=1000)
    topup_success_url: str = "http://127.0.0.1:8000/topup?status=success"
    topup_cancel_url: str = "http://127.0.0.1:8000/topup?status=cancelled"
    festival_environment: str = Field(default="production", pattern=r"^(production|development)$")
    # (1.1) Genuine wristbands (PROTOCOL.md): the 0600 file of the card master key, and the
    # public base URL of the API, written into every wristband (`card program`, GET /t); the
    # attendee's portal is FESTIVAL_PORTAL_URL/portal, its session cookie Secure when https.
    card_master_key_file: Path | None = None
    # (1.1) uid: a wristband is its UID (card_sun allowed and ignored); sun: every kiosk's bar
    # order and top-up must carry a verified, fresh SUN message (needs CARD_MASTER_KEY_FILE).
    festival_card_auth: str = Field(default="uid", pattern=r"^(uid|sun)$")
    festival_portal_url: str = Field(
        default="http://127.0.0.1:8000", pattern=r"^https?://[!-~]{1,180}$"
    )
    # (1.1) The festival's own bank account, the debtor of `payout export`'s SEPA credit-transfer
    # file (cloud/payout_export.py checks them when the file is written: name, IBAN, BIC).
    festival_payout_debtor_name: str | None = None
    festival_payout_debtor_iban: str | None = None
    festival_payout_debtor_bic: str | None = None

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value:
            _check_database_url(value)
        return normalise_database_url(value) if value else value

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_mqtt_url(value.get_secret_value())
        return value

    @field_validator("consumer_metrics_host")
    @classmethod
    def _metrics_host(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(
                "CONSUMER_METRICS_HOST must be an IP address such as 127.0.0.1"
            ) from None
        return value

    @model_validator(mode="after")
    def _metrics_port_in_range(self) -> CloudSettings:
        if self.consumer_metrics_port and self.metrics_port > 65535:
            raise ValueError(
                "CONSUMER_METRICS_PORT + CONSUMER_METRICS_PORT_OFFSET must be at most 65535"
            )
        return self

    @property
    def metrics_port(self) -> int:
        """This consumer's metrics port: 0 (none) or CONSUMER_METRICS_PORT + the offset."""
        if not self.consumer_metrics_port:
            return 0
        return self.consumer_metrics_port + self.consumer_metrics_port_offset

    @model_validator(mode="after")
    def _tls_files_need_mqtts(self) -> CloudSettings:
        # A CA or client certificate with mqtt:// would silently connect in clear text.
        tls_files = [self.mqtt_ca_file, self.mqtt_cert_file, self.mqtt_key_file]
        if self.mqtt_url is not None and any(tls_files):
            if not parse_mqtt_url(self.mqtt_url.get_secret_value()).tls:
                raise ValueError("MQTT_CA_FILE, MQTT_CERT_FILE and MQTT_KEY_FILE need mqtts://")
        return self

    def require(self, *names: str) -> None:
        missing = [name.upper() for name in names if getattr(self, name) in (None, "")]
        if missing:
            raise SettingsError("missing environment variable(s): " + ", ".join(missing))
        if self.festival_environment == "production":
            for name in names:
                value = getattr(self, name)
                if isinstance(value, SecretStr) and (
                    value.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS
                ):
                    raise SettingsError(f"{name.upper()} is a placeholder; set a real secret")

    @property
    def default_offline_policy(self) -> OfflinePolicy | None:
        """(1.1) The offline policy of a kiosk's first config (`kiosk add`); None when
        FESTIVAL_OFFLINE_SALE_MAX_CENTS is 0 (no offline sales)."""
        if self.festival_offline_sale_max_cents == 0:
            return None
        return OfflinePolicy(
            sale_max_cents=self.festival_offline_sale_max_cents,
            card_max_cents=self.festival_offline_card_max_cents,
            kiosk_max_cents=self.festival_offline_kiosk_max_cents,
        )

    @property
    def sun_mode(self) -> bool:
        """(1.1) FESTIVAL_CARD_AUTH=sun: wristbands must prove they are genuine."""
        return self.festival_card_auth == "sun"

    def card_master_key(self) -> bytes | None:
        """(1.1) The card master key in sun mode (None in uid mode); SettingsError when sun mode
        has no CARD_MASTER_KEY_FILE or the file is not a 0600 key (never quoting it)."""
        if not self.sun_mode:
            return None
        self.require("card_master_key_file")
        assert self.card_master_key_file is not None
        try:
            return load_card_master_key(self.card_master_key_file)
        except (OSError, ValueError) as error:
            raise SettingsError(f"FESTIVAL_CARD_AUTH=sun: CARD_MASTER_KEY_FILE: {error}") from None

    @property
    def mqtt_endpoint(self) -> MqttEndpoint:
        self.require("mqtt_url")
        assert self.mqtt_url is not None
        return parse_mqtt_url(self.mqtt_url.get_secret_value())


def load_settings() -> CloudSettings:
    try:
        return CloudSettings()
    except ValueError as error:
        raise SettingsError(redact(str(error))) from None
