-- Contacts from a CRM spreadsheet export, cleaned up for import.
--
-- The export's headers arrive normalised (lower case, other characters
-- become `_`, the empty header becomes `_1`, the second "Notes" `notes__2`):
--
--   "First Name"     → first_name        "Zip Code"    → zip_code
--   "Last Name"      → last_name         "Country"     → country
--   "E-mail Address" → e_mail_address    "Subscribed?" → subscribed_
--   "Phone #"        → phone__           "Notes"       → notes
--   "Date of Birth"  → date_of_birth     ""            → _1
--                                        "Notes"       → notes__2
--
-- Only text cleaning happens here. Parsing and validation (e-mail syntax,
-- phone numbers to E.164, the month-first birth dates, Yes/No) is done by
-- the typed variables in connector.toml, which report every row that fails.
-- `_line` carries each contact's line in the file, so a rejected one is
-- reported where it is in the export (it is left out of the output).

CREATE VIEW output.contacts AS
WITH settings AS (
    SELECT value AS default_country
    FROM meta.parameters
    WHERE name = 'default_country'
)
SELECT
    c._line,
    nullif(lower(trim(c.e_mail_address)), '')                        AS email,
    initcap(trim(c.first_name))                                      AS first_name,
    initcap(trim(c.last_name))                                       AS last_name,
    nullif(trim(c.phone__), '')                                      AS phone,
    nullif(trim(c.date_of_birth), '')                                AS birth_date,
    nullif(upper(trim(c.zip_code)), '')                              AS zip,
    coalesce(nullif(upper(trim(c.country)), ''), s.default_country)  AS country,
    nullif(lower(trim(c.subscribed_)), '')                           AS is_subscribed,
    nullif(trim(c._1), '')                                           AS tag,
    nullif(concat_ws(' / ', nullif(trim(c.notes), ''), nullif(trim(c.notes__2), '')), '') AS notes
FROM input.data AS c
CROSS JOIN settings AS s;
