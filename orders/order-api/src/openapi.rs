//! The OpenAPI 3.1 description of order-api, served at `/openapi.json`. A test checks that every
//! route the router serves is described here, with its error statuses.

use orderflow_schemas::contract::{
    MAX_EMAIL_CHARS, MAX_ID_CHARS, MAX_LINES, MAX_QUANTITY, MAX_TOTAL_MINOR, MAX_UNIT_PRICE_MINOR,
};
use serde_json::{Value, json};

use orderflow_orders::OrderStatus;

use crate::waiters;

fn problem(description: &str) -> Value {
    json!({ "description": description, "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } })
}

pub fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "orderflow order-api",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Order intake. A 202 means the order and its OrderPlaced event are committed; payment follows asynchronously — poll the status URL.\n\nEvery /orders route takes a bearer JWT from the issuer order-api is configured with (RS256, ES256 or EdDSA, with a kid its JWKS publishes; iss, aud, exp and sub required). Scopes: orders:write places orders (a token with a customer_id claim only for that customer); orders:read reads any order; a customer's own token reads that customer's orders. Someone else's order answers 404, exactly as a missing one. Rate limits are per token subject."
        },
        "security": [ { "bearer": [] } ],
        "paths": {
            "/orders": { "post": {
                "operationId": "createOrder",
                "summary": "Accept an order",
                "parameters": [
                    { "name": "Idempotency-Key", "in": "header", "required": true, "schema": { "type": "string", "minLength": 1, "maxLength": 255 },
                      "description": "Unique per order; resend it on every retry. Same key and body: the same answer. Same key, other body: 422." },
                    { "name": "traceparent", "in": "header", "required": false, "schema": { "type": "string" } }
                ],
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/OrderRequest" } } } },
                "responses": {
                    "202": { "description": "Accepted (or replayed: header Idempotent-Replayed: true)",
                             "headers": { "Location": { "schema": { "type": "string" } } },
                             "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Accepted" } } },
                             "links": { "GetOrder": { "operationId": "getOrder", "parameters": { "order_id": "$response.body#/order_id" },
                                                      "description": "The order just accepted: its status and history" } } },
                    "400": problem("Malformed JSON, or a missing or invalid Idempotency-Key"),
                    "413": problem("Body over the size limit"),
                    "401": problem("No bearer token, or a token that does not verify (the detail and WWW-Authenticate say why)"),
                    "403": problem("The token lacks orders:write, or acts for another customer"),
                    "415": problem("Body is not application/json"),
                    "422": problem("Invalid order (each field named in `errors`), or the Idempotency-Key was used with another body"),
                    "429": problem("Per-subject rate limit; see Retry-After"),
                    "503": problem("Database or schema registry unavailable; retry with the same Idempotency-Key")
                }
            }},
            "/orders/{order_id}": { "get": {
                "operationId": "getOrder",
                "summary": "An order's status and its history; optionally, wait for it to change",
                "description": "With wait_for and/or newer_than the answer comes as soon as the order reaches one of those statuses (or a version above newer_than), woken by the database's change notification, or with the order as it is at the timeout. The Orderflow-Wait header says which: reached or timed-out. Each instance serves a bounded number of waiting requests; beyond, 503 with Retry-After.",
                "parameters": [
                    { "name": "order_id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } },
                    { "name": "wait_for", "in": "query", "required": false, "description": "Comma-separated statuses to wait for", "schema": { "type": "string", "example": "PAID,PAYMENT_FAILED,CANCELLED" } },
                    { "name": "newer_than", "in": "query", "required": false, "description": "Wait for a version above this one", "schema": { "type": "integer", "minimum": 0 } },
                    { "name": "timeout", "in": "query", "required": false, "description": format!("How long to wait, with wait_for or newer_than (alone it is refused with 400): 10s, 1500ms or 10 (seconds); default {}s, at most {}s", waiters::DEFAULT_TIMEOUT.as_secs(), waiters::MAX_TIMEOUT.as_secs()), "schema": { "type": "string", "example": "10s" } }
                ],
                "responses": {
                    "200": {
                        "description": "The order (when waiting: as soon as it got there, or as it is at the timeout)",
                        "headers": { "Orderflow-Wait": { "description": "reached or timed-out, when the request waited", "schema": { "type": "string", "enum": ["reached", "timed-out"] } } },
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Order" } } }
                    },
                    "400": problem("Not a UUID, or a bad wait_for / newer_than / timeout"),
                    "401": problem("No bearer token, or a token that does not verify"),
                    "404": problem("No such order, or one this token may not read"),
                    "429": problem("Per-subject rate limit; see Retry-After"),
                    "503": problem("Database unavailable, or too many requests already waiting on this instance (Retry-After)")
                }
            }},
            "/healthz": { "get": { "operationId": "health", "summary": "Liveness", "security": [], "responses": { "200": { "description": "The process is serving" } } } },
            "/readyz": { "get": { "operationId": "ready", "summary": "Readiness: Postgres reachable, event schemas resolved, the issuer's keys read", "security": [],
                "responses": { "200": { "description": "Ready" }, "503": { "description": "Not ready" } } } },
            "/openapi.json": { "get": { "operationId": "openapi", "summary": "This document", "security": [], "responses": { "200": { "description": "OpenAPI 3.1" } } } }
        },
        "components": {
          "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } },
          "schemas": {
            "OrderRequest": {
                "type": "object", "additionalProperties": false,
                "required": ["customer_id", "currency", "items"],
                "properties": {
                    "customer_id": { "type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS },
                    "customer_email": { "type": ["string", "null"], "format": "email", "maxLength": MAX_EMAIL_CHARS },
                    "currency": { "type": "string", "pattern": "^[A-Z]{3}$" },
                    "items": { "type": "array", "minItems": 1, "maxItems": MAX_LINES,
                        "description": format!("The order's total (quantity × unit_price_minor, summed) must be from 1 to {MAX_TOTAL_MINOR}"),
                        "items": {
                        "type": "object", "additionalProperties": false, "required": ["sku", "quantity", "unit_price_minor"],
                        "properties": {
                            "sku": { "type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS },
                            "quantity": { "type": "integer", "minimum": 1, "maximum": MAX_QUANTITY },
                            "unit_price_minor": { "type": "integer", "minimum": 0, "maximum": MAX_UNIT_PRICE_MINOR, "description": "Price in the currency's minor unit" }
                        }
                    }}
                }
            },
            "Accepted": { "type": "object", "properties": {
                "order_id": { "type": "string", "format": "uuid" }, "status": { "type": "string" }, "status_url": { "type": "string" } } },
            "Order": { "type": "object", "properties": {
                "order_id": { "type": "string", "format": "uuid" }, "customer_id": { "type": "string" },
                "customer_email": { "type": ["string", "null"] }, "currency": { "type": "string" },
                "items": { "type": "array" }, "total_minor": { "type": "integer" },
                "status": { "type": "string", "enum": OrderStatus::ALL.map(OrderStatus::as_str) },
                "version": { "type": "integer" }, "created_at": { "type": "string", "format": "date-time" },
                "updated_at": { "type": "string", "format": "date-time" },
                "trace_id": { "type": ["string", "null"], "description": "The trace the order was accepted in (W3C trace id, 32 hex digits); every event about the order continues it" },
                "history": { "type": "array", "items": { "type": "object", "properties": {
                    "version": { "type": "integer" }, "status": { "type": "string" }, "reason": { "type": ["string", "null"] },
                    "at": { "type": "string", "format": "date-time" } } } } } },
            "Problem": { "type": "object", "description": "RFC 9457 problem details", "properties": {
                "type": { "type": "string" }, "title": { "type": "string" }, "status": { "type": "integer" }, "detail": { "type": "string" },
                "errors": { "type": "array", "items": { "type": "object", "properties": {
                    "field": { "type": "string", "description": "JSON pointer" }, "message": { "type": "string" } } } } } }
        }}
    })
}
