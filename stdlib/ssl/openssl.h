/* openssl.h: OpenSSL for the stdlib's C modules, loaded on first use.
 *
 * Linked in, OpenSSL costs every start-up: the dynamic loader resolves
 * and relocates libcrypto's symbols (or, linked statically into a PIE
 * binary, its pointer tables) in every script, TLS or not, a third of a
 * hello world's instructions and page faults (docs/performance.md,
 * "Start-up").  So nothing links it: the modules that use it (ssl._ssl,
 * http._ws) call ml__openssl_load() when they are first required, which
 * dlopen()s libssl.so.3 and libcrypto.so.3 and fills ml__ossl, and every
 * OpenSSL function they call is a #define below naming its pointer there.
 * The declarations come from OpenSSL's own headers (included first), so
 * each pointer has the function's exact type.
 *
 * A new OpenSSL function goes in ML_OSSL_SSL or ML_OSSL_CRYPTO (by the
 * library that exports it) and in the #defines, sorted.  One forgotten
 * fails the build: the shared library is linked with -z defs and no
 * OpenSSL, so a direct call is an undefined symbol. */
#ifndef ML_OPENSSL_H
#define ML_OPENSSL_H

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* The functions of libssl.so.3. */
#define ML_OSSL_SSL(X)                      \
  X(SSL_CIPHER_get_bits)                    \
  X(SSL_CIPHER_get_name)                    \
  X(SSL_CIPHER_get_version)                 \
  X(SSL_CTX_callback_ctrl)                  \
  X(SSL_CTX_check_private_key)              \
  X(SSL_CTX_clear_options)                  \
  X(SSL_CTX_ctrl)                           \
  X(SSL_CTX_free)                           \
  X(SSL_CTX_get_cert_store)                 \
  X(SSL_CTX_get_ex_data)                    \
  X(SSL_CTX_get_options)                    \
  X(SSL_CTX_get_verify_mode)                \
  X(SSL_CTX_load_verify_locations)          \
  X(SSL_CTX_new)                            \
  X(SSL_CTX_sess_set_new_cb)                \
  X(SSL_CTX_set_alpn_protos)                \
  X(SSL_CTX_set_alpn_select_cb)             \
  X(SSL_CTX_set_cipher_list)                \
  X(SSL_CTX_set_default_passwd_cb)          \
  X(SSL_CTX_set_default_passwd_cb_userdata) \
  X(SSL_CTX_set_default_verify_paths)       \
  X(SSL_CTX_set_ex_data)                    \
  X(SSL_CTX_set_options)                    \
  X(SSL_CTX_set_session_id_context)         \
  X(SSL_CTX_set_verify)                     \
  X(SSL_CTX_use_PrivateKey_file)            \
  X(SSL_CTX_use_certificate_chain_file)     \
  X(SSL_SESSION_free)                       \
  X(SSL_SESSION_is_resumable)               \
  X(SSL_SESSION_up_ref)                     \
  X(SSL_ctrl)                               \
  X(SSL_do_handshake)                       \
  X(SSL_free)                               \
  X(SSL_get0_alpn_selected)                 \
  X(SSL_get0_param)                         \
  X(SSL_get1_peer_certificate)              \
  X(SSL_get_SSL_CTX)                        \
  X(SSL_get_current_cipher)                 \
  X(SSL_get_error)                          \
  X(SSL_get_ex_data)                        \
  X(SSL_get_servername)                     \
  X(SSL_get_verify_mode)                    \
  X(SSL_get_verify_result)                  \
  X(SSL_get_version)                        \
  X(SSL_get_wbio)                           \
  X(SSL_new)                                \
  X(SSL_pending)                            \
  X(SSL_read_ex)                            \
  X(SSL_select_next_proto)                  \
  X(SSL_session_reused)                     \
  X(SSL_set_SSL_CTX)                        \
  X(SSL_set_accept_state)                   \
  X(SSL_set_bio)                            \
  X(SSL_set_connect_state)                  \
  X(SSL_set_ex_data)                        \
  X(SSL_set_session)                        \
  X(SSL_set_verify)                         \
  X(SSL_shutdown)                           \
  X(SSL_write_ex)                           \
  X(TLS_client_method)                      \
  X(TLS_method)                             \
  X(TLS_server_method)

/* The functions of libcrypto.so.3. */
#define ML_OSSL_CRYPTO(X)            \
  X(ASN1_INTEGER_to_BN)              \
  X(ASN1_STRING_get0_data)           \
  X(ASN1_STRING_length)              \
  X(ASN1_STRING_to_UTF8)             \
  X(ASN1_TIME_print)                 \
  X(BIO_clear_flags)                 \
  X(BIO_ctrl)                        \
  X(BIO_ctrl_pending)                \
  X(BIO_free)                        \
  X(BIO_get_data)                    \
  X(BIO_get_new_index)               \
  X(BIO_meth_new)                    \
  X(BIO_meth_set_create)             \
  X(BIO_meth_set_ctrl)               \
  X(BIO_meth_set_write_ex)           \
  X(BIO_new)                         \
  X(BIO_new_mem_buf)                 \
  X(BIO_s_mem)                       \
  X(BIO_set_data)                    \
  X(BIO_set_init)                    \
  X(BIO_write)                       \
  X(BN_bn2hex)                       \
  X(BN_free)                         \
  X(CRYPTO_free)                     \
  X(CRYPTO_get_ex_new_index)         \
  X(ERR_clear_error)                 \
  X(ERR_lib_error_string)            \
  X(ERR_new)                         \
  X(ERR_peek_error)                  \
  X(ERR_peek_last_error)             \
  X(ERR_reason_error_string)         \
  X(ERR_set_debug)                   \
  X(ERR_set_error)                   \
  X(EVP_Digest)                      \
  X(EVP_EncodeBlock)                 \
  X(EVP_sha1)                        \
  X(GENERAL_NAMES_free)              \
  X(OBJ_nid2ln)                      \
  X(OBJ_obj2nid)                     \
  X(OBJ_obj2txt)                     \
  X(OPENSSL_sk_num)                  \
  X(OPENSSL_sk_value)                \
  X(OpenSSL_version)                 \
  X(PEM_read_bio_X509)               \
  X(RAND_bytes)                      \
  X(X509_NAME_ENTRY_get_data)        \
  X(X509_NAME_ENTRY_get_object)      \
  X(X509_NAME_entry_count)           \
  X(X509_NAME_get_entry)             \
  X(X509_STORE_add_cert)             \
  X(X509_VERIFY_PARAM_set1_host)     \
  X(X509_VERIFY_PARAM_set1_ip_asc)   \
  X(X509_VERIFY_PARAM_set_hostflags) \
  X(X509_free)                       \
  X(X509_get0_notAfter)              \
  X(X509_get0_notBefore)             \
  X(X509_get0_serialNumber)          \
  X(X509_get_ext_d2i)                \
  X(X509_get_issuer_name)            \
  X(X509_get_subject_name)           \
  X(X509_get_version)                \
  X(X509_verify_cert_error_string)   \
  X(i2d_X509)

typedef struct ml_Openssl {
#define ML_OSSL_FIELD(f) __typeof__(f) *f;
  ML_OSSL_SSL(ML_OSSL_FIELD)
  ML_OSSL_CRYPTO(ML_OSSL_FIELD)
#undef ML_OSSL_FIELD
} ml_Openssl;

/* The pointers, filled by ml__openssl_load (openssl.c); read-only after. */
extern ml_Openssl ml__ossl;

/* Loads OpenSSL once per process (any thread, any number of calls).
 * Returns NULL when it is loaded, else why not ("cannot load OpenSSL
 * (install libssl3): libssl.so.3: cannot open shared object file"), the
 * same message at every later call. */
const char *ml__openssl_load(void);

#define ASN1_INTEGER_to_BN (ml__ossl.ASN1_INTEGER_to_BN)
#define ASN1_STRING_get0_data (ml__ossl.ASN1_STRING_get0_data)
#define ASN1_STRING_length (ml__ossl.ASN1_STRING_length)
#define ASN1_STRING_to_UTF8 (ml__ossl.ASN1_STRING_to_UTF8)
#define ASN1_TIME_print (ml__ossl.ASN1_TIME_print)
#define BIO_clear_flags (ml__ossl.BIO_clear_flags)
#define BIO_ctrl (ml__ossl.BIO_ctrl)
#define BIO_ctrl_pending (ml__ossl.BIO_ctrl_pending)
#define BIO_free (ml__ossl.BIO_free)
#define BIO_get_data (ml__ossl.BIO_get_data)
#define BIO_get_new_index (ml__ossl.BIO_get_new_index)
#define BIO_meth_new (ml__ossl.BIO_meth_new)
#define BIO_meth_set_create (ml__ossl.BIO_meth_set_create)
#define BIO_meth_set_ctrl (ml__ossl.BIO_meth_set_ctrl)
#define BIO_meth_set_write_ex (ml__ossl.BIO_meth_set_write_ex)
#define BIO_new (ml__ossl.BIO_new)
#define BIO_new_mem_buf (ml__ossl.BIO_new_mem_buf)
#define BIO_s_mem (ml__ossl.BIO_s_mem)
#define BIO_set_data (ml__ossl.BIO_set_data)
#define BIO_set_init (ml__ossl.BIO_set_init)
#define BIO_write (ml__ossl.BIO_write)
#define BN_bn2hex (ml__ossl.BN_bn2hex)
#define BN_free (ml__ossl.BN_free)
#define CRYPTO_free (ml__ossl.CRYPTO_free)
#define CRYPTO_get_ex_new_index (ml__ossl.CRYPTO_get_ex_new_index)
#define ERR_clear_error (ml__ossl.ERR_clear_error)
#define ERR_lib_error_string (ml__ossl.ERR_lib_error_string)
#define ERR_new (ml__ossl.ERR_new)
#define ERR_peek_error (ml__ossl.ERR_peek_error)
#define ERR_peek_last_error (ml__ossl.ERR_peek_last_error)
#define ERR_reason_error_string (ml__ossl.ERR_reason_error_string)
#define ERR_set_debug (ml__ossl.ERR_set_debug)
#define ERR_set_error (ml__ossl.ERR_set_error)
#define EVP_Digest (ml__ossl.EVP_Digest)
#define EVP_EncodeBlock (ml__ossl.EVP_EncodeBlock)
#define EVP_sha1 (ml__ossl.EVP_sha1)
#define GENERAL_NAMES_free (ml__ossl.GENERAL_NAMES_free)
#define OBJ_nid2ln (ml__ossl.OBJ_nid2ln)
#define OBJ_obj2nid (ml__ossl.OBJ_obj2nid)
#define OBJ_obj2txt (ml__ossl.OBJ_obj2txt)
#define OPENSSL_sk_num (ml__ossl.OPENSSL_sk_num)
#define OPENSSL_sk_value (ml__ossl.OPENSSL_sk_value)
#define OpenSSL_version (ml__ossl.OpenSSL_version)
#define PEM_read_bio_X509 (ml__ossl.PEM_read_bio_X509)
#define RAND_bytes (ml__ossl.RAND_bytes)
#define SSL_CIPHER_get_bits (ml__ossl.SSL_CIPHER_get_bits)
#define SSL_CIPHER_get_name (ml__ossl.SSL_CIPHER_get_name)
#define SSL_CIPHER_get_version (ml__ossl.SSL_CIPHER_get_version)
#define SSL_CTX_callback_ctrl (ml__ossl.SSL_CTX_callback_ctrl)
#define SSL_CTX_check_private_key (ml__ossl.SSL_CTX_check_private_key)
#define SSL_CTX_clear_options (ml__ossl.SSL_CTX_clear_options)
#define SSL_CTX_ctrl (ml__ossl.SSL_CTX_ctrl)
#define SSL_CTX_free (ml__ossl.SSL_CTX_free)
#define SSL_CTX_get_cert_store (ml__ossl.SSL_CTX_get_cert_store)
#define SSL_CTX_get_ex_data (ml__ossl.SSL_CTX_get_ex_data)
#define SSL_CTX_get_options (ml__ossl.SSL_CTX_get_options)
#define SSL_CTX_get_verify_mode (ml__ossl.SSL_CTX_get_verify_mode)
#define SSL_CTX_load_verify_locations (ml__ossl.SSL_CTX_load_verify_locations)
#define SSL_CTX_new (ml__ossl.SSL_CTX_new)
#define SSL_CTX_sess_set_new_cb (ml__ossl.SSL_CTX_sess_set_new_cb)
#define SSL_CTX_set_alpn_protos (ml__ossl.SSL_CTX_set_alpn_protos)
#define SSL_CTX_set_alpn_select_cb (ml__ossl.SSL_CTX_set_alpn_select_cb)
#define SSL_CTX_set_cipher_list (ml__ossl.SSL_CTX_set_cipher_list)
#define SSL_CTX_set_default_passwd_cb (ml__ossl.SSL_CTX_set_default_passwd_cb)
#define SSL_CTX_set_default_passwd_cb_userdata (ml__ossl.SSL_CTX_set_default_passwd_cb_userdata)
#define SSL_CTX_set_default_verify_paths (ml__ossl.SSL_CTX_set_default_verify_paths)
#define SSL_CTX_set_ex_data (ml__ossl.SSL_CTX_set_ex_data)
#define SSL_CTX_set_options (ml__ossl.SSL_CTX_set_options)
#define SSL_CTX_set_session_id_context (ml__ossl.SSL_CTX_set_session_id_context)
#define SSL_CTX_set_verify (ml__ossl.SSL_CTX_set_verify)
#define SSL_CTX_use_PrivateKey_file (ml__ossl.SSL_CTX_use_PrivateKey_file)
#define SSL_CTX_use_certificate_chain_file (ml__ossl.SSL_CTX_use_certificate_chain_file)
#define SSL_SESSION_free (ml__ossl.SSL_SESSION_free)
#define SSL_SESSION_is_resumable (ml__ossl.SSL_SESSION_is_resumable)
#define SSL_SESSION_up_ref (ml__ossl.SSL_SESSION_up_ref)
#define SSL_ctrl (ml__ossl.SSL_ctrl)
#define SSL_do_handshake (ml__ossl.SSL_do_handshake)
#define SSL_free (ml__ossl.SSL_free)
#define SSL_get0_alpn_selected (ml__ossl.SSL_get0_alpn_selected)
#define SSL_get0_param (ml__ossl.SSL_get0_param)
#define SSL_get1_peer_certificate (ml__ossl.SSL_get1_peer_certificate)
#define SSL_get_SSL_CTX (ml__ossl.SSL_get_SSL_CTX)
#define SSL_get_current_cipher (ml__ossl.SSL_get_current_cipher)
#define SSL_get_error (ml__ossl.SSL_get_error)
#define SSL_get_ex_data (ml__ossl.SSL_get_ex_data)
#define SSL_get_servername (ml__ossl.SSL_get_servername)
#define SSL_get_verify_mode (ml__ossl.SSL_get_verify_mode)
#define SSL_get_verify_result (ml__ossl.SSL_get_verify_result)
#define SSL_get_version (ml__ossl.SSL_get_version)
#define SSL_get_wbio (ml__ossl.SSL_get_wbio)
#define SSL_new (ml__ossl.SSL_new)
#define SSL_pending (ml__ossl.SSL_pending)
#define SSL_read_ex (ml__ossl.SSL_read_ex)
#define SSL_select_next_proto (ml__ossl.SSL_select_next_proto)
#define SSL_session_reused (ml__ossl.SSL_session_reused)
#define SSL_set_SSL_CTX (ml__ossl.SSL_set_SSL_CTX)
#define SSL_set_accept_state (ml__ossl.SSL_set_accept_state)
#define SSL_set_bio (ml__ossl.SSL_set_bio)
#define SSL_set_connect_state (ml__ossl.SSL_set_connect_state)
#define SSL_set_ex_data (ml__ossl.SSL_set_ex_data)
#define SSL_set_session (ml__ossl.SSL_set_session)
#define SSL_set_verify (ml__ossl.SSL_set_verify)
#define SSL_shutdown (ml__ossl.SSL_shutdown)
#define SSL_write_ex (ml__ossl.SSL_write_ex)
#define TLS_client_method (ml__ossl.TLS_client_method)
#define TLS_method (ml__ossl.TLS_method)
#define TLS_server_method (ml__ossl.TLS_server_method)
#define X509_NAME_ENTRY_get_data (ml__ossl.X509_NAME_ENTRY_get_data)
#define X509_NAME_ENTRY_get_object (ml__ossl.X509_NAME_ENTRY_get_object)
#define X509_NAME_entry_count (ml__ossl.X509_NAME_entry_count)
#define X509_NAME_get_entry (ml__ossl.X509_NAME_get_entry)
#define X509_STORE_add_cert (ml__ossl.X509_STORE_add_cert)
#define X509_VERIFY_PARAM_set1_host (ml__ossl.X509_VERIFY_PARAM_set1_host)
#define X509_VERIFY_PARAM_set1_ip_asc (ml__ossl.X509_VERIFY_PARAM_set1_ip_asc)
#define X509_VERIFY_PARAM_set_hostflags (ml__ossl.X509_VERIFY_PARAM_set_hostflags)
#define X509_free (ml__ossl.X509_free)
#define X509_get0_notAfter (ml__ossl.X509_get0_notAfter)
#define X509_get0_notBefore (ml__ossl.X509_get0_notBefore)
#define X509_get0_serialNumber (ml__ossl.X509_get0_serialNumber)
#define X509_get_ext_d2i (ml__ossl.X509_get_ext_d2i)
#define X509_get_issuer_name (ml__ossl.X509_get_issuer_name)
#define X509_get_subject_name (ml__ossl.X509_get_subject_name)
#define X509_get_version (ml__ossl.X509_get_version)
#define X509_verify_cert_error_string (ml__ossl.X509_verify_cert_error_string)
#define i2d_X509 (ml__ossl.i2d_X509)

#endif
