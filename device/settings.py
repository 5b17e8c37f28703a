"""The kiosk's configuration: environment variables, validated once at start.

pydantic-settings is not part of the kiosk install (the ``kiosk`` extra stays small on a Pi), so
this is a frozen dataclass filled by explicit checks. ``load_settings(environ)`` reads every
variable, collects every problem and raises one ``SettingsError`` naming them all; unknown
``KIOSK_*`` variables are refused too (a typo must not silently become a default).
Keys and the menu are loaded here, so a kiosk with a bad key file never starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import device
from device.keys import load_private_key, mode_problem
from device.limits import (
    BUZZER_PIN_DEFAULT,
    FIRMWARE_DEFAULT,
    GPIO_PIN_MAX,
    GPIO_PIN_MIN,
    GREEN_PIN_DEFAULT,
    HTTP_PORT_DEFAULT,
    MENU_FILE_BYTES_MAX,
    OFFLINE_AFTER_MAX_S,
    OFFLINE_AFTER_MIN_S,
    OFFLINE_AFTER_S_DEFAULT,
    OUTBOX_MAX_DEFAULT,
    OUTBOX_MAX_MAX,
    OUTBOX_MAX_MIN,
    RED_PIN_DEFAULT,
    RESEND_AFTER_MAX_S,
    RESEND_AFTER_MIN_S,
    RESEND_AFTER_S_DEFAULT,
    RESULT_TIMEOUT_MAX_S,
    RESULT_TIMEOUT_MIN_S,
    RESULT_TIMEOUT_S_DEFAULT,
    RETURN_CENTS_MAX_MAX,
)
from device.machine import Mode
from device.menu import Menu, MenuError, parse_menu
from protocol.keys import Ed25519PrivateKey, Ed25519PublicKey, load_public_key_b64
from protocol.limits import (
    CURRENCY_PATTERN,
    FIRMWARE_LENGTH_MAX,
    READER_NAME_LENGTH_MAX,
    RETURN_CENTS_MAX_DEFAULT,
    TEXT_FORBIDDEN_PATTERN,
    TOPUP_CENTS_MAX_DEFAULT,
    TOPUP_CENTS_MIN,
    VOID_WINDOW_S_DEFAULT,
)
from protocol.mqtt_url import MqttEndpoint, parse_mqtt_url
from protocol.topics import is_valid_kiosk_id, validate_topic_prefix

DEFAULT_MENU_FILE = Path(device.__file__).resolve().parent / "menus" / "default.json"
SIMULATED_READER = "sim"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# Every variable the kiosk reads; any other KIOSK_* variable is an error.
KNOWN_VARIABLES = frozenset(
    {
        "KIOSK_ID",
        "KIOSK_KEY_FILE",
        "CLOUD_PUBLIC_KEY",
        "MQTT_URL",
        "MQTT_CA_FILE",
        "MQTT_CERT_FILE",
        "MQTT_KEY_FILE",
        "KIOSK_STATE_DIR",
        "KIOSK_MODE",
        "KIOSK_READER",
        "KIOSK_GPIO",
        "FESTIVAL_TOPIC_PREFIX",
        "FESTIVAL_CURRENCY",
        "FESTIVAL_MAX_TOPUP_CENTS",
        "FESTIVAL_RETURN_MAX_CENTS",
        "FESTIVAL_VOID_WINDOW_S",
        "KIOSK_HTTP_PORT",
        "KIOSK_MENU_FILE",
        "KIOSK_RESULT_TIMEOUT_S",
        "KIOSK_RESEND_AFTER_S",
        "KIOSK_OFFLINE_AFTER_S",
        "KIOSK_OUTBOX_MAX",
        "KIOSK_GREEN_PIN",
        "KIOSK_RED_PIN",
        "KIOSK_BUZZER_PIN",
        "KIOSK_FIRMWARE",
        "KIOSK_LOG_LEVEL",
    }
)

T = TypeVar("T")


class SettingsError(ValueError):
    """The configuration is invalid; the message lists every problem, one per line."""


@dataclass(frozen=True)
class KioskSettings:
    kiosk_id: str
    key_file: Path
    private_key: Ed25519PrivateKey = field(repr=False)
    cloud_public_key: Ed25519PublicKey = field(repr=False)
    mqtt: MqttEndpoint
    mqtt_ca_file: Path | None
    mqtt_cert_file: Path | None
    mqtt_key_file: Path | None
    state_dir: Path
    mode: Mode
    reader: str
    gpio: Literal["rpi", "fake"]
    topic_prefix: str = "festival"
    currency: str = "EUR"
    topup_cents_max: int = TOPUP_CENTS_MAX_DEFAULT
    return_cents_max: int = RETURN_CENTS_MAX_DEFAULT
    # (1.1) How long "cancel" is offered on an order (the cloud's FESTIVAL_VOID_WINDOW_S decides).
    void_window_s: int = VOID_WINDOW_S_DEFAULT
    http_port: int = HTTP_PORT_DEFAULT
    menu_file: Path = DEFAULT_MENU_FILE
    menu: Menu | None = None
    result_timeout_s: float = RESULT_TIMEOUT_S_DEFAULT
    resend_after_s: float = RESEND_AFTER_S_DEFAULT
    offline_after_s: float = OFFLINE_AFTER_S_DEFAULT
    outbox_max: int = OUTBOX_MAX_DEFAULT
    green_pin: int = GREEN_PIN_DEFAULT
    red_pin: int = RED_PIN_DEFAULT
    buzzer_pin: int = BUZZER_PIN_DEFAULT
    firmware: str = FIRMWARE_DEFAULT
    log_level: str = "INFO"

    @property
    def simulated_reader(self) -> bool:
        return self.reader == SIMULATED_READER


class _Collector:
    """Reads variables and remembers every problem instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []

    def raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        return None if value is None or value.strip() == "" else value.strip()

    def required(self, name: str) -> str | None:
        value = self.raw(name)
        if value is None:
            self.problems.append(f"{name} is required")
        return value

    def parsed(self, name: str, default: T, parse: Callable[[str], T], rule: str) -> T:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return parse(value)
        except (ValueError, OverflowError):
            self.problems.append(f"{name} must be {rule}")
            return default

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        def parse(text: str) -> int:
            number = int(text, 10)
            if not low <= number <= high:
                raise ValueError
            return number

        return self.parsed(name, default, parse, f"an integer {low}..{high}")

    def seconds(self, name: str, default: float, low: float, high: float) -> float:
        def parse(text: str) -> float:
            number = float(text)
            if not math.isfinite(number) or not low <= number <= high:
                raise ValueError
            return number

        return self.parsed(name, default, parse, f"a number of seconds {low}..{high}")

    def file(self, name: str, *, required: bool) -> Path | None:
        value = self.required(name) if required else self.raw(name)
        if value is None:
            return None
        path = Path(value)
        if not path.is_file():
            self.problems.append(f"{name}: {path} is not a readable file")
            return None
        return path


def load_settings(environ: Mapping[str, str]) -> KioskSettings:
    """Validate the kiosk's environment; raise SettingsError listing every problem."""
    env = _Collector(environ)
    unknown = sorted(
        name for name in environ if name.startswith("KIOSK_") and name not in KNOWN_VARIABLES
    )
    for name in unknown:
        env.problems.append(f"{name} is not a kiosk setting (typo?)")

    kiosk_id = env.required("KIOSK_ID")
    if kiosk_id is not None and not is_valid_kiosk_id(kiosk_id):
        env.problems.append("KIOSK_ID must be 1-32 of [a-z0-9-], starting with a letter")

    key_file = env.file("KIOSK_KEY_FILE", required=True)
    private_key: Ed25519PrivateKey | None = None
    if key_file is not None:
        problem = mode_problem(key_file)
        if problem is not None:
            env.problems.append(f"KIOSK_KEY_FILE {problem}")
        try:
            private_key = load_private_key(key_file)
        except (ValueError, OSError) as error:
            env.problems.append(f"KIOSK_KEY_FILE: {error}")

    cloud_key_text = env.required("CLOUD_PUBLIC_KEY")
    cloud_public_key: Ed25519PublicKey | None = None
    if cloud_key_text is not None:
        try:
            cloud_public_key = load_public_key_b64(cloud_key_text)
        except ValueError as error:
            env.problems.append(f"CLOUD_PUBLIC_KEY: {error}")

    mqtt: MqttEndpoint | None = None
    mqtt_url = env.required("MQTT_URL")
    if mqtt_url is not None:
        try:
            mqtt = parse_mqtt_url(mqtt_url)
        except ValueError as error:
            env.problems.append(str(error))  # names MQTT_URL, password redacted
    ca_file = env.file("MQTT_CA_FILE", required=False)
    cert_file = env.file("MQTT_CERT_FILE", required=False)
    mqtt_key_file = env.file("MQTT_KEY_FILE", required=False)
    if (cert_file is None) != (mqtt_key_file is None):
        env.problems.append("MQTT_CERT_FILE and MQTT_KEY_FILE go together")

    state_dir_text = env.required("KIOSK_STATE_DIR")
    state_dir = Path(state_dir_text) if state_dir_text else Path()
    if state_dir_text is not None and state_dir.exists() and not state_dir.is_dir():
        env.problems.append(f"KIOSK_STATE_DIR {state_dir} is not a directory")

    mode_text = env.required("KIOSK_MODE")
    mode = Mode.BAR
    if mode_text is not None:
        try:
            mode = Mode(mode_text)
        except ValueError:
            env.problems.append("KIOSK_MODE must be bar or checkpoint")

    reader = env.required("KIOSK_READER") or SIMULATED_READER
    if len(reader) > READER_NAME_LENGTH_MAX or TEXT_FORBIDDEN_PATTERN.search(reader):
        env.problems.append(f"KIOSK_READER must be at most {READER_NAME_LENGTH_MAX} characters")

    gpio_text = env.required("KIOSK_GPIO")
    gpio: Literal["rpi", "fake"] = "fake"
    if gpio_text == "rpi":
        gpio = "rpi"
    elif gpio_text not in (None, "fake"):
        env.problems.append("KIOSK_GPIO must be rpi or fake")

    topic_prefix = env.raw("FESTIVAL_TOPIC_PREFIX") or "festival"
    try:
        validate_topic_prefix(topic_prefix)
    except ValueError as error:
        env.problems.append(f"FESTIVAL_TOPIC_PREFIX: {error}")
    currency = env.raw("FESTIVAL_CURRENCY") or "EUR"
    if not CURRENCY_PATTERN.match(currency):
        env.problems.append("FESTIVAL_CURRENCY must be an ISO 4217 code such as EUR")
    topup_cents_max = env.integer(
        "FESTIVAL_MAX_TOPUP_CENTS", TOPUP_CENTS_MAX_DEFAULT, TOPUP_CENTS_MIN, 10**11
    )
    return_cents_max = env.integer(
        "FESTIVAL_RETURN_MAX_CENTS", RETURN_CENTS_MAX_DEFAULT, 0, RETURN_CENTS_MAX_MAX
    )
    void_window_s = env.integer("FESTIVAL_VOID_WINDOW_S", VOID_WINDOW_S_DEFAULT, 0, 10**6)

    http_port = env.integer("KIOSK_HTTP_PORT", HTTP_PORT_DEFAULT, 0, 65535)
    menu_file = env.file("KIOSK_MENU_FILE", required=False) or DEFAULT_MENU_FILE
    menu: Menu | None = None
    if mode is Mode.BAR:
        menu = _load_menu(menu_file, currency, env)

    result_timeout_s = env.seconds(
        "KIOSK_RESULT_TIMEOUT_S",
        RESULT_TIMEOUT_S_DEFAULT,
        RESULT_TIMEOUT_MIN_S,
        RESULT_TIMEOUT_MAX_S,
    )
    resend_after_s = env.seconds(
        "KIOSK_RESEND_AFTER_S", RESEND_AFTER_S_DEFAULT, RESEND_AFTER_MIN_S, RESEND_AFTER_MAX_S
    )
    offline_after_s = env.seconds(
        "KIOSK_OFFLINE_AFTER_S", OFFLINE_AFTER_S_DEFAULT, OFFLINE_AFTER_MIN_S, OFFLINE_AFTER_MAX_S
    )
    outbox_max = env.integer("KIOSK_OUTBOX_MAX", OUTBOX_MAX_DEFAULT, OUTBOX_MAX_MIN, OUTBOX_MAX_MAX)
    pins = [
        env.integer(name, default, GPIO_PIN_MIN, GPIO_PIN_MAX)
        for name, default in (
            ("KIOSK_GREEN_PIN", GREEN_PIN_DEFAULT),
            ("KIOSK_RED_PIN", RED_PIN_DEFAULT),
            ("KIOSK_BUZZER_PIN", BUZZER_PIN_DEFAULT),
        )
    ]
    if len(set(pins)) != len(pins):
        env.problems.append("KIOSK_GREEN_PIN, KIOSK_RED_PIN and KIOSK_BUZZER_PIN must differ")
    firmware = env.raw("KIOSK_FIRMWARE") or FIRMWARE_DEFAULT
    if len(firmware) > FIRMWARE_LENGTH_MAX or TEXT_FORBIDDEN_PATTERN.search(firmware):
        env.problems.append(f"KIOSK_FIRMWARE must be 1..{FIRMWARE_LENGTH_MAX} printable characters")
    log_level = (env.raw("KIOSK_LOG_LEVEL") or "INFO").upper()
    if log_level not in LOG_LEVELS:
        env.problems.append("KIOSK_LOG_LEVEL must be one of " + ", ".join(LOG_LEVELS))

    if env.problems:
        raise SettingsError("\n".join(env.problems))
    assert kiosk_id is not None and key_file is not None and private_key is not None
    assert cloud_public_key is not None and mqtt is not None
    return KioskSettings(
        kiosk_id=kiosk_id,
        key_file=key_file,
        private_key=private_key,
        cloud_public_key=cloud_public_key,
        mqtt=mqtt,
        mqtt_ca_file=ca_file,
        mqtt_cert_file=cert_file,
        mqtt_key_file=mqtt_key_file,
        state_dir=state_dir,
        mode=mode,
        reader=reader,
        gpio=gpio,
        topic_prefix=topic_prefix,
        currency=currency,
        topup_cents_max=topup_cents_max,
        return_cents_max=return_cents_max,
        void_window_s=void_window_s,
        http_port=http_port,
        menu_file=menu_file,
        menu=menu,
        result_timeout_s=result_timeout_s,
        resend_after_s=resend_after_s,
        offline_after_s=offline_after_s,
        outbox_max=outbox_max,
        green_pin=pins[0],
        red_pin=pins[1],
        buzzer_pin=pins[2],
        firmware=firmware,
        log_level=log_level,
    )


def _load_menu(path: Path, currency: str, env: _Collector) -> Menu | None:
    try:
        with path.open("rb") as file:
            data = file.read(MENU_FILE_BYTES_MAX + 1)
    except OSError as error:
        env.problems.append(f"KIOSK_MENU_FILE: cannot read {path}: {error}")
        return None
    if len(data) > MENU_FILE_BYTES_MAX:
        env.problems.append(f"KIOSK_MENU_FILE: {path} is larger than {MENU_FILE_BYTES_MAX} bytes")
        return None
    try:
        return parse_menu(data, currency=currency)
    except MenuError as error:
        env.problems.append(f"KIOSK_MENU_FILE {path}: {error}")
        return None
