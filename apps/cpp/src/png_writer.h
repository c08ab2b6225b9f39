// 8-bit RGB PNG with tEXt metadata, written with libpng to a temporary file and renamed into place.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "runner.h"

namespace flash_edge {

void write_png(const Image& image, const std::string& path, const std::vector<std::pair<std::string, std::string>>& text);

}  // namespace flash_edge
