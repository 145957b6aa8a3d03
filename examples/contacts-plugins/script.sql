-- The contacts export of contacts-import (with Grace Hopper sending the
-- form twice); here only a little SQL: the phone numbers and the duplicate
-- are handled by the transform steps in connector.toml.
CREATE VIEW output.contacts AS
SELECT
    nullif(lower(trim(e_mail_address)), '')                          AS email,
    trim(concat_ws(' ', initcap(trim(first_name)), initcap(trim(last_name)))) AS name,
    nullif(trim(phone__), '')                                        AS phone,
    nullif(upper(trim(country)), '')                                 AS country
FROM input.data;
