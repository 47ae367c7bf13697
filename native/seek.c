/*
 * lseek(2) with SEEK_DATA / SEEK_HOLE, which Node's fs module does not expose.
 * Raw images use it to report holes as zero extents without reading them.
 * seek(fd, offset, whence) returns the new offset, or -1 when there is no more data
 * (ENXIO), and throws with the errno text on any other failure (EINVAL when the file
 * system does not support the query; callers then treat the whole file as data).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <node_api.h>

static napi_value Seek(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd = -1, which = 0;
  int64_t offset = 0;
  if (argc < 3 || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_value_int64(env, argv[1], &offset) != napi_ok ||
      napi_get_value_int32(env, argv[2], &which) != napi_ok) {
    napi_throw_type_error(env, NULL, "seek(fd, offset, whence: 0=data 1=hole)");
    return NULL;
  }
  off_t r = lseek(fd, (off_t)offset, which == 0 ? SEEK_DATA : SEEK_HOLE);
  napi_value out;
  if (r < 0) {
    if (errno == ENXIO) {
      napi_create_int64(env, -1, &out);
      return out;
    }
    napi_throw_error(env, NULL, strerror(errno));
    return NULL;
  }
  napi_create_int64(env, (int64_t)r, &out);
  return out;
}

static napi_value Init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "seek", NAPI_AUTO_LENGTH, Seek, NULL, &fn);
  napi_set_named_property(env, exports, "seek", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
