-- Built-in voices every tenant can use (tenant_id NULL); names match the TTS voice registry's ids.
INSERT INTO voices (id, tenant_id, name, description, language)
VALUES
    ('00000000-0000-4000-8000-000000000001', NULL, 'default_female_1', 'Warm female voice (built-in)', 'en'),
    ('00000000-0000-4000-8000-000000000002', NULL, 'default_male_1', 'Calm male voice (built-in)', 'en');
