"""The kiosk firmware: card reader, indicators, outbox, signed MQTT, local page (docs/kiosk.md)."""
