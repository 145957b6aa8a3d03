-- Order webhooks from a shop. Each row of `input.webhooks` is one delivery:
-- `received_at`, `webhook_id`, `content_type`, `querystring` and `body`, the
-- JSON text the shop sent. JSON functions read into it: `json_get_str(body,
-- 'customer', 'email')` walks keys (and array indexes), `json_get_int`,
-- `json_get_float` and `json_get_bool` read typed values, `json_length`
-- counts an array, and `json_get_array` gives an array's elements, which
-- `unnest` turns into rows. Each returns NULL where the body has no such
-- value (or is not JSON at all).

-- One row per order; the body is kept whole as `payload` so the `json`
-- variable reports a body that is not JSON.
CREATE VIEW output.orders AS
SELECT
    _line,
    body                                            AS payload,
    json_get_str(body, 'id')                        AS order_id,
    lower(json_get_str(body, 'customer', 'email'))  AS email,
    json_get_str(body, 'customer', 'name')          AS customer,
    json_get_str(body, 'created_at')                AS created_at,
    json_length(body, 'lines')                      AS line_count
FROM input.webhooks;

-- One row per element of the `lines` array of each order.
CREATE VIEW output.order_lines AS
SELECT
    _line,
    order_id,
    order_id || '/' || json_get_str(line, 'sku')   AS line_id,
    json_get_str(line, 'sku')                       AS sku,
    json_get_int(line, 'qty')                       AS quantity,
    json_get_float(line, 'price')                   AS price
FROM (
    SELECT
        _line,
        json_get_str(body, 'id')                    AS order_id,
        unnest(json_get_array(body, 'lines'))       AS line
    FROM input.webhooks
) AS lines;
