#include "png_writer.h"

#include <png.h>

#include <cstdio>
#include <memory>

#include "error.h"

namespace flash_edge {

void write_png(const Image& image, const std::string& path, const std::vector<std::pair<std::string, std::string>>& text) {
  const std::string tmp = path + ".partial";
  FILE* file = std::fopen(tmp.c_str(), "wb");
  if (!file) throw Error("cannot write " + path);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    std::fclose(file);
    std::remove(tmp.c_str());
    throw Error("libpng failed to write " + path);
  }
  png_init_io(png, file);
  png_set_IHDR(png, info, image.width, image.height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  std::vector<png_text> chunks(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    chunks[i] = png_text{};
    chunks[i].compression = PNG_ITXT_COMPRESSION_NONE;  // UTF-8 text (a prompt is not Latin-1)
    chunks[i].key = const_cast<char*>(text[i].first.c_str());
    chunks[i].text = const_cast<char*>(text[i].second.c_str());
  }
  if (!chunks.empty()) png_set_text(png, info, chunks.data(), static_cast<int>(chunks.size()));
  png_write_info(png, info);
  for (int row = 0; row < image.height; ++row)
    png_write_row(png, image.rgb.data() + static_cast<size_t>(row) * image.width * 3);
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  bool closed = std::fclose(file) == 0;
  if (!closed || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error("cannot write " + path);
  }
}

}  // namespace flash_edge
