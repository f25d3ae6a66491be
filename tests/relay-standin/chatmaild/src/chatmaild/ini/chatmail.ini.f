[params]

# the domain name of this relay
mail_domain = {mail_domain}

# privacy contacts published on the landing page
privacy_postal =
privacy_mail =
privacy_pdo =
privacy_supervisor =

# limits
# max_user_send_per_minute = 60
# max_user_send_burst_size = 10
# max_mailbox_size = 500M
# max_message_size = 31457280
# delete_mails_after = 20
# delete_large_after = 7
# delete_inactive_users_after = 90
# username_min_length = 9
# username_max_length = 9
# password_min_length = 9
# www_folder =
# filtermail_smtp_port = 10080
# filtermail_smtp_port_incoming = 10081
# filtermail_http_port_incoming = 10082
# filtermail_lmtp_port_transport = 10083
# postfix_reinject_port = 10025
# postfix_reinject_port_incoming = 10026
# disable_ipv6 = False
# acme_email =
# imap_rawlog = False
# imap_compress = False
# turn_socket_path = /run/chatmail-turn/turn.socket
# max_load_1m = 5
# min_available_memory = 200M
# min_free_disk_space = 1G
# max_imap_connections = 10000
# max_smtp_connections = 1000
# mtail_address =
# iroh_relay =
# tls_external_cert_and_key =
