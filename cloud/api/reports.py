"""The report routes (admin bearer ADMIN_TOKEN): the sales CSV an accountant downloads, the same
rows as JSON for the dashboard's tables and chart, the shift and staff reports (CSV and JSON), and
the liability. The SQL and the CSV are
cloud/reports.py's; this module only turns HTTP parameters into its calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Query
from starlette.responses import JSONResponse, Response

from cloud.api.errors import INVALID_REQUEST, ApiError
from cloud.api.monitoring import json_response, require_admin
from cloud.limits import REPORT_MOMENT_LENGTH_MAX
from cloud.reports import (
    ReportError,
    Reports,
    SalesGroup,
    SalesWindow,
    shift_report_csv,
    shift_report_rows,
    staff_report,
    staff_report_csv,
    staff_window,
)
from protocol.limits import CHECKPOINT_ID_LENGTH_MAX, CHECKPOINT_ID_LENGTH_MIN

CSV_MEDIA_TYPE = "text/csv; charset=utf-8"

_MOMENT_DESCRIPTION = (
    "RFC 3339 date-time with an offset (e.g. 2026-07-04T21:00:00Z), compared with the sale's "
    "time; `from` is inclusive, `to` exclusive"
)


def _moment(alias: str) -> Any:
    return Query(
        None,
        alias=alias,
        max_length=REPORT_MOMENT_LENGTH_MAX,
        description=_MOMENT_DESCRIPTION,
        json_schema_extra={"format": "date-time"},
    )


def _checkpoint() -> Any:
    return Query(
        None,
        min_length=CHECKPOINT_ID_LENGTH_MIN,
        max_length=CHECKPOINT_ID_LENGTH_MAX,
        description="only this checkpoint's shifts",
    )


def _window(start: str | None, end: str | None) -> SalesWindow:
    try:
        return SalesWindow.parse(start, end)
    except ReportError as error:
        raise ApiError(400, INVALID_REQUEST, str(error)) from None


def _csv_attachment(body: str, filename: str) -> Response:
    """A report's CSV as a download, never cached (it holds the day's money)."""
    return Response(
        body,
        media_type=CSV_MEDIA_TYPE,
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
        },
    )


def _add_report_routes(
    routes: APIRouter,
    path: str,
    csv_route: tuple[Callable[..., Response], str],
    json_route: tuple[Callable[..., JSONResponse], str],
    refusals: dict[int | str, dict[str, Any]],
) -> None:
    """A report's two routes: ``path``.csv (the CSV download) and ``path`` (its JSON)."""
    csv_handler, csv_summary = csv_route
    routes.add_api_route(
        f"{path}.csv",
        csv_handler,
        methods=["GET"],
        summary=csv_summary,
        response_class=Response,
        responses={200: {"content": {CSV_MEDIA_TYPE.split(";")[0]: {}}}, **refusals},
    )
    json_handler, json_summary = json_route
    routes.add_api_route(
        path, json_handler, methods=["GET"], summary=json_summary, responses=refusals
    )


def router(reports: Reports) -> APIRouter:
    def sales_csv(
        group: SalesGroup = Query(..., description="product, kiosk, hour, vat (or quarter_hour)"),
        start: str | None = _moment("from"),
        end: str | None = _moment("to"),
    ) -> Response:
        window = _window(start, end)
        try:
            body = reports.sales_csv(group, window)
        except ReportError as error:
            raise ApiError(400, INVALID_REQUEST, str(error)) from None
        return _csv_attachment(body, f"sales-{group.value}-{reports.currency}.csv")

    def sales(
        group: SalesGroup = Query(..., description="product, kiosk, hour, vat or quarter_hour"),
        start: str | None = _moment("from"),
        end: str | None = _moment("to"),
    ) -> JSONResponse:
        window = _window(start, end)
        try:
            return json_response(reports.sales_json(group, window))
        except ReportError as error:
            raise ApiError(400, INVALID_REQUEST, str(error)) from None

    def shift_rows(checkpoint: str | None, start: str | None, end: str | None) -> list[Any]:
        window = _window(start, end)
        try:
            return shift_report_rows(reports, checkpoint_id=checkpoint, window=window)
        except ReportError as error:
            raise ApiError(400, INVALID_REQUEST, str(error)) from None

    def shifts_csv(
        checkpoint: str | None = _checkpoint(),
        start: str | None = _moment("from"),
        end: str | None = _moment("to"),
    ) -> Response:
        body = shift_report_csv(shift_rows(checkpoint, start, end))
        return _csv_attachment(body, f"shifts-{reports.currency}.csv")

    def shifts(
        checkpoint: str | None = _checkpoint(),
        start: str | None = _moment("from"),
        end: str | None = _moment("to"),
    ) -> JSONResponse:
        rows = shift_rows(checkpoint, start, end)
        return json_response({"currency": reports.currency, "rows": rows})

    def staff_figures(start: str | None, end: str | None) -> dict[str, Any]:
        try:
            return staff_report(reports, staff_window(start, end))
        except ReportError as error:
            raise ApiError(400, INVALID_REQUEST, str(error)) from None

    def staff_csv(
        start: str | None = _moment("from"),
        end: str | None = _moment("to"),
    ) -> Response:
        body = staff_report_csv(staff_figures(start, end))
        return _csv_attachment(body, f"staff-{reports.currency}.csv")

    def staff(
        start: str | None = _moment("from"),
        end: str | None = _moment("to"),
    ) -> JSONResponse:
        return json_response(staff_figures(start, end))

    def liability() -> JSONResponse:
        return json_response(reports.liability())

    refusals: dict[int | str, dict[str, Any]] = {
        400: {"description": "bad group, from or to; or more rows than a report may have"},
        401: {"description": "missing or wrong admin token"},
    }
    routes = APIRouter(tags=["reports"], dependencies=[Depends(require_admin)])
    _add_report_routes(
        routes,
        "/api/reports/sales",
        (sales_csv, "Sales per product, kiosk or hour as CSV (sales lines only, net of voids)"),
        (sales, "The sales report's rows and total as JSON (the dashboard's tables and chart)"),
        refusals,
    )
    shift_refusals: dict[int | str, dict[str, Any]] = {
        400: {"description": "bad checkpoint, from or to; or more rows than a report may have"},
        401: refusals[401],
    }
    _add_report_routes(
        routes,
        "/api/reports/shifts",
        (
            shifts_csv,
            "The shift report as CSV: per checkpoint and shift, a row per staff member "
            "and the shift's total (cash paid out, expected, counted, variance)",
        ),
        (shifts, "The shift report's rows as JSON (the dashboard's open shifts and closes)"),
        shift_refusals,
    )
    staff_refusals: dict[int | str, dict[str, Any]] = {
        400: {"description": "bad from or to; or more rows than a report may have"},
        401: refusals[401],
    }
    _add_report_routes(
        routes,
        "/api/reports/staff",
        (
            staff_csv,
            "Sales and top-ups per staff member as CSV (today, UTC, without from/to): "
            "orders, voided, net, voids made, cash and card top-ups, cash-outs, kiosks",
        ),
        (staff, "The staff report's rows and total as JSON (the dashboard's Staff table)"),
        staff_refusals,
    )
    routes.add_api_route(
        "/api/reports/liability",
        liability,
        methods=["GET"],
        summary="What the festival owes: card balances + payouts pending + deposits - debts",
        responses={401: refusals[401]},
    )
    return routes
